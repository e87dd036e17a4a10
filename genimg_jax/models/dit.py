"""DiT, the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

An image [B, H, W, C] is cut into (H/p) * (W/p) non-overlapping p x p patches, in raster
order; each is embedded to `hidden_size` by a conv with kernel = stride = p, plus a fixed
2-D sin-cos position embedding. The tokens pass through `depth` Transformer blocks
conditioned by adaLN-Zero on c = embed(noise label) + embed(class label), and a final
adaLN layer maps each token back to its p x p patch of `out_ch` channels.

As facebookresearch/DiT's models.py (same layers, same initialisation), except:
- the noise label is embedded by `layers.timestep_embedding` (sin half first; DiT's puts
  cos first and spaces the frequencies by 1/half instead of 1/(half - 1));
- the output has `out_ch` channels: DiT's learned variance is 2C of them;
- label dropout for classifier-free guidance is the caller's: it passes the null label
  `num_classes`, and the table always holds its row;
- optional dropout on the residual branches (DiT has none), and H may differ from W.
Parameters are float32, compute in `dtype`, output float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genimg_jax.models import layers

TIME_FREQUENCIES = 256  # width of the sinusoidal noise-label features, as DiT's
LAYER_NORM_EPS = 1e-6

# DiT's initialisation: xavier-uniform kernels and zero biases (flax's default bias init),
# N(0, 0.02) for the label table and the time MLP, zero for the adaLN modulations and the
# output projection.
_XAVIER = nn.initializers.xavier_uniform()
_SMALL_NORMAL = nn.initializers.normal(0.02)
_ZEROS = nn.initializers.zeros
# Xavier over the flattened [p * p * C, hidden] kernel, as DiT does for its patch conv.
_PATCH_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """Cuts images into non-overlapping square patches, the layout `unpatchify` inverts.

  Args:
    x: [B, H, W, C], H and W divisible by patch_size.
    patch_size: p.
  Returns:
    [B, (H/p) * (W/p), p * p * C] in x's dtype: patches in raster order, the features of
    one ordered (row in patch, column in patch, channel).
  """
  b, h, w, c = x.shape
  p = patch_size
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
  """Reassembles patches into images, the inverse of `patchify`.

  Args:
    tokens: [B, (H/p) * (W/p), p * p * C] in `patchify`'s layout.
    patch_size: p.
    height: H, divisible by p.
    width: W, divisible by p.
  Returns:
    [B, H, W, C] in tokens' dtype.
  """
  b, _, d = tokens.shape
  p = patch_size
  c = d // (p * p)
  x = tokens.reshape(b, height // p, width // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def sincos_pos_embedding(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """The fixed 2-D sin-cos position embedding of DiT (and MAE) for a grid_h x grid_w token grid.

  The token at row i, column j (raster order) gets [sin(j w), cos(j w), sin(i w), cos(i w)]
  with frequencies w_k = 10000 ** (-k / (dim / 4)), k = 0 .. dim/4 - 1: the first half of
  the channels encodes the column, the second half the row.

  Args:
    dim: embedding width, divisible by 4.
    grid_h: rows of tokens.
    grid_w: columns of tokens.
  Returns:
    [grid_h * grid_w, dim] float32 NumPy array, computed in float64.
  """
  if dim % 4:
    raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
  quarter = dim // 4
  freqs = 10000.0 ** (-np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                           indexing="ij")

  def encode(position):
    args = position.reshape(-1, 1) * freqs
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)

  return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def _dense(features: int, name: str, dtype, kernel_init=_XAVIER) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, name=name)


def _layer_norm(dtype) -> nn.LayerNorm:
  """LayerNorm without scale or bias: adaLN supplies both."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_bias=False, use_scale=False, dtype=dtype)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, L, D] * (1 + scale) + shift, with shift and scale [B, 1, D]."""
  return x * (1 + scale) + shift


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning: x [B, L, D], c [B, D] -> [B, L, D].

  x + gate1 * attention(LN(x) * (1 + scale1) + shift1), then the same with the MLP. The
  six modulations are a zero-initialised Dense of SiLU(c), so the gates start at zero
  and the block starts as the identity.
  """

  num_heads: int
  mlp_ratio: float
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, *, train: bool) -> jax.Array:
    b, length, d = x.shape
    drop = nn.Dropout(self.dropout, deterministic=not train)
    modulation = _dense(6 * d, "ada_ln", self.dtype, _ZEROS)(nn.silu(c))[:, None, :]
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation, 6, axis=-1)

    h = _modulate(_layer_norm(self.dtype)(x), shift_attn, scale_attn)
    qkv = _dense(3 * d, "qkv", self.dtype)(h).reshape(b, length, 3, self.num_heads, d // self.num_heads)
    with jax.named_scope("attention"):  # names the scores, softmax and values in profiles
      h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, length, d)
    x = x + gate_attn * drop(_dense(d, "attn_out", self.dtype)(h))

    h = _modulate(_layer_norm(self.dtype)(x), shift_mlp, scale_mlp)
    h = nn.gelu(_dense(int(d * self.mlp_ratio), "mlp_in", self.dtype)(h), approximate=True)
    return x + gate_mlp * drop(_dense(d, "mlp_out", self.dtype)(h))


class DiT(nn.Module):
  """Diffusion Transformer: x [B, H, W, C] float, noise_label [B] float, labels [B] int32 or None
  -> [B, H, W, out_ch] float32.

  H and W must be divisible by `patch_size`, `hidden_size` by `num_heads` and by 4 (the
  position embedding). noise_label is any real value (a timestep in [0, 1000), EDM's
  ln(sigma) / 4, ...). With num_classes > 0 a class embedding of labels in [0, num_classes]
  is added to the noise-label embedding; the label num_classes (and labels=None) is the null
  class of classifier-free guidance. With num_classes = 0 there is no class embedding and
  labels are ignored. At initialisation the output is zero and every block the identity.
  With time_inputs = 2, noise_label is [B, 2]: a time and a second scalar (MeanFlow's t - r, a shortcut
  model's step size), each embedded by its own MLP and summed.
  """

  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  out_ch: int  # before mlp_ratio: a dataclass field without a default cannot follow one with
  mlp_ratio: float = 4.0
  num_classes: int = 0
  dropout: float = 0.0
  time_inputs: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, noise_label: jax.Array, labels: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    b, height, width, _ = x.shape
    p, d = self.patch_size, self.hidden_size
    if height % p or width % p:
      raise ValueError(f"DiT: image size {height}x{width} is not divisible by patch_size={p}")
    if d % self.num_heads:
      raise ValueError(f"DiT: hidden_size={d} is not divisible by num_heads={self.num_heads}")

    tokens = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, kernel_init=_PATCH_INIT,
                     name="patch_embed")(x.astype(self.dtype))
    tokens = tokens.reshape(b, -1, d) + jnp.asarray(sincos_pos_embedding(d, height // p, width // p), self.dtype)

    embeddings = []
    for i, time in enumerate(layers.split_times(noise_label, self.time_inputs)):
      suffix = f"_{i}" if i else ""  # the first keeps the one-time DiT's parameter names
      e = _dense(d, f"time{suffix}_in", self.dtype, _SMALL_NORMAL)(layers.timestep_embedding(time, TIME_FREQUENCIES))
      embeddings.append(_dense(d, f"time{suffix}_out", self.dtype, _SMALL_NORMAL)(nn.silu(e)))
    c = sum(embeddings[1:], embeddings[0])
    if self.num_classes:
      if labels is None:
        labels = jnp.full((b,), self.num_classes, jnp.int32)
      c = c + nn.Embed(self.num_classes + 1, d, dtype=self.dtype, embedding_init=_SMALL_NORMAL,
                       name="label_embed")(labels)

    for i in range(self.depth):
      tokens = DiTBlock(self.num_heads, self.mlp_ratio, self.dropout, self.dtype, name=f"block_{i}")(
          tokens, c, train=train)

    modulation = _dense(2 * d, "final_ada_ln", self.dtype, _ZEROS)(nn.silu(c))[:, None, :]
    shift, scale = jnp.split(modulation, 2, axis=-1)
    tokens = _modulate(_layer_norm(self.dtype)(tokens), shift, scale)
    tokens = _dense(p * p * self.out_ch, "final_proj", self.dtype, _ZEROS)(tokens)
    return unpatchify(tokens, p, height, width).astype(jnp.float32)

"""The DiT backbone: shapes, adaLN-Zero initialisation, patches, position embedding, labels, size,
and agreement with the PyTorch reference in benchmarks/torch_reference/dit.py."""

import math

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.models import dit
from genimg_jax.models.dit import DiT

SIZE, PATCH, HIDDEN, DEPTH, HEADS, CLASSES = 8, 2, 32, 2, 4, 10


def _tiny(out_ch=3, **overrides):
  fields = {"patch_size": PATCH, "hidden_size": HIDDEN, "depth": DEPTH, "num_heads": HEADS, "out_ch": out_ch}
  return DiT(**{**fields, **overrides})


def _inputs(channels=3, batch=2, seed=0):
  """x [B, SIZE, SIZE, channels] float32, noise labels [B] in [0, 1000), labels [B] int32 in [0, CLASSES)."""
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((batch, SIZE, SIZE, channels), np.float32)),
          jnp.asarray(rng.uniform(0.0, 1000.0, batch).astype(np.float32)),
          jnp.asarray(rng.integers(0, CLASSES, batch, dtype=np.int32)))


def _param_shapes(model, x, noise_label, labels=None):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, noise_label, labels, train=False))["params"]


def _random_params(model, x, noise_label, labels=None, seed=1, scale=0.1):
  """Every parameter of `model` drawn from N(0, scale^2), the zero-initialised ones included.

  Drawn by NumPy: compiling `init` would take most of this file's time.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape, np.float32)),
                      _param_shapes(model, x, noise_label, labels))


def _apply(model, params, *args, train=False, **kwargs):
  return model.apply({"params": params}, *args, train=train, **kwargs)


@pytest.mark.parametrize("channels,dtype", [(1, jnp.float32), (3, jnp.float32), (3, jnp.bfloat16)])
def test_output_shape_and_dtype(channels, dtype):
  model = _tiny(channels, num_classes=CLASSES, dtype=dtype)
  x, t, labels = _inputs(channels)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(_param_shapes(model, x, t, labels)))
  y = _apply(model, _random_params(model, x, t, labels), x.astype(dtype), t, labels)
  chex.assert_shape(y, x.shape)
  chex.assert_type(y, jnp.float32)
  chex.assert_tree_all_finite(y)


def test_bfloat16_compute_is_close_to_float32():
  model = _tiny(num_classes=CLASSES)
  x, t, labels = _inputs()
  params = _random_params(model, x, t, labels)
  y32 = _apply(model, params, x, t, labels)
  y16 = _apply(model.clone(dtype=jnp.bfloat16), params, x, t, labels)
  np.testing.assert_allclose(y16, y32, atol=0.05 * float(jnp.abs(y32).max()))


def test_output_is_zero_and_gates_are_zero_at_init():
  model = _tiny(num_classes=CLASSES)
  x, t, labels = _inputs()
  params = model.init(jax.random.PRNGKey(0), x, t, labels, train=False)["params"]
  assert not jnp.any(_apply(model, params, x, t, labels))
  for i in range(DEPTH):
    assert not any(jnp.any(leaf) for leaf in jax.tree.leaves(params[f"block_{i}"]["ada_ln"]))
  assert jnp.any(params[f"block_{DEPTH - 1}"]["qkv"]["kernel"])


def test_blocks_with_zero_gates_are_identities():
  model = _tiny(num_classes=CLASSES)
  x, t, labels = _inputs()
  # Random weights everywhere but the blocks' adaLN, zero as at init: each block passes its input on.
  params = _random_params(model, x, t, labels)
  for i in range(DEPTH):
    params[f"block_{i}"]["ada_ln"] = jax.tree.map(jnp.zeros_like, params[f"block_{i}"]["ada_ln"])
  y, state = _apply(model, params, x, t, labels, mutable=["intermediates"],
                    capture_intermediates=lambda m, _: isinstance(m, dit.DiTBlock) or m.name == "patch_embed")
  captured = state["intermediates"]
  patches = captured["patch_embed"]["__call__"][0].reshape(2, -1, HIDDEN)
  tokens = patches + dit.sincos_pos_embedding(HIDDEN, SIZE // PATCH, SIZE // PATCH)
  for i in range(DEPTH):
    np.testing.assert_array_equal(captured[f"block_{i}"]["__call__"][0], tokens)
  shallow = {k: v for k, v in params.items() if not k.startswith("block_")}
  np.testing.assert_array_equal(y, _apply(model.clone(depth=0), shallow, x, t, labels))
  assert jnp.abs(y).max() > 0.1


@pytest.mark.parametrize("height,width,channels,patch", [(8, 8, 3, 2), (12, 8, 1, 4), (6, 10, 2, 1)])
def test_unpatchify_inverts_patchify(height, width, channels, patch):
  x = np.random.default_rng(0).standard_normal((2, height, width, channels), np.float32)
  tokens = dit.patchify(x, patch)
  chex.assert_shape(tokens, (2, (height // patch) * (width // patch), patch * patch * channels))
  # Token 1 is the patch right of the first, its features ordered (row, column, channel).
  np.testing.assert_array_equal(tokens[:, 1], x[:, :patch, patch:2 * patch].reshape(2, -1))
  np.testing.assert_array_equal(dit.unpatchify(tokens, patch, height, width), x)


def test_patch_embedding_is_a_dense_map_of_patches():
  model = _tiny()
  x, t, _ = _inputs()
  params = _random_params(model, x, t)
  _, state = _apply(model, params, x, t, mutable=["intermediates"],
                    capture_intermediates=lambda m, _: m.name == "patch_embed")
  kernel, bias = params["patch_embed"]["kernel"], params["patch_embed"]["bias"]
  expected = dit.patchify(x, PATCH) @ kernel.reshape(-1, HIDDEN) + bias
  np.testing.assert_allclose(state["intermediates"]["patch_embed"]["__call__"][0].reshape(2, -1, HIDDEN),
                             expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,grid_h,grid_w", [(32, 4, 4), (8, 3, 5)])
def test_pos_embedding_matches_formula(dim, grid_h, grid_w):
  expected = np.zeros((grid_h * grid_w, dim))
  quarter = dim // 4
  for i in range(grid_h):
    for j in range(grid_w):
      for k in range(quarter):
        w = 10000.0 ** (-k / quarter)
        token = i * grid_w + j
        expected[token, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = [
            math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)]
  got = dit.sincos_pos_embedding(dim, grid_h, grid_w)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def test_labels_condition_the_output_and_null_label_is_unconditional():
  model = _tiny(num_classes=CLASSES)
  x, t, labels = _inputs()
  params = _random_params(model, x, t, labels)
  apply = lambda y: _apply(model, params, x, t, y)
  y = apply(labels)
  assert jnp.abs(y - apply((labels + 1) % CLASSES)).max() > 1e-3
  null = jnp.full_like(labels, CLASSES)
  np.testing.assert_array_equal(apply(null), apply(None))
  assert jnp.abs(apply(null) - y).max() > 1e-3


def test_noise_label_conditions_the_output():
  model = _tiny()
  x, t, _ = _inputs()
  params = _random_params(model, x, t)
  y = _apply(model, params, x, t)
  y_edm = _apply(model, params, x, jnp.array([-1.2, 0.3]))  # c_noise = ln(sigma) / 4
  assert jnp.abs(y - y_edm).max() > 1e-3


def test_unconditional_model_has_no_label_embedding_and_ignores_labels():
  model = _tiny()
  x, t, labels = _inputs()
  params = _random_params(model, x, t, labels)
  assert "label_embed" not in params
  np.testing.assert_array_equal(_apply(model, params, x, t, labels), _apply(model, params, x, t))


def test_dropout_only_when_training():
  model = _tiny(dropout=0.5)
  x, t, _ = _inputs()
  params = _random_params(model, x, t)
  y = _apply(model, params, x, t)
  y_train = _apply(model, params, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert jnp.abs(y - y_train).max() > 1e-3


def _closed_form_count(in_ch, out_ch, p, d, depth, mlp_ratio, num_classes):
  mlp = int(d * mlp_ratio)
  block = (d * 6 * d + 6 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
  # No term for the position embedding: a constant, not a parameter.
  return (p * p * in_ch * d + d                                  # patch embedding
          + 256 * d + d + d * d + d                              # noise-label MLP
          + ((num_classes + 1) * d if num_classes else 0)        # label table with the null label
          + depth * block
          + d * 2 * d + 2 * d + d * p * p * out_ch + p * p * out_ch)  # final adaLN and projection


@pytest.mark.parametrize("in_ch,out_ch,p,d,depth,heads,mlp_ratio,num_classes,size", [
    (3, 3, 2, 32, 2, 4, 4.0, 0, 8),
    (1, 2, 4, 48, 3, 6, 2.5, 10, 16),
    (3, 3, 2, 384, 12, 6, 4.0, 0, 32),  # DiT-S/2
])
def test_parameter_count(in_ch, out_ch, p, d, depth, heads, mlp_ratio, num_classes, size):
  model = DiT(patch_size=p, hidden_size=d, depth=depth, num_heads=heads, out_ch=out_ch, mlp_ratio=mlp_ratio,
              num_classes=num_classes)
  x = jnp.zeros((1, size, size, in_ch))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), train=False))
  assert set(shapes) == {"params"}
  count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
  assert count == _closed_form_count(in_ch, out_ch, p, d, depth, mlp_ratio, num_classes)


def test_bad_shapes_are_rejected():
  x, t, _ = _inputs()
  with pytest.raises(ValueError, match="not divisible by patch_size=3"):
    _param_shapes(_tiny(patch_size=3), x, t)
  with pytest.raises(ValueError, match="hidden_size=32 is not divisible by num_heads=5"):
    _param_shapes(_tiny(num_heads=5), x, t)
  with pytest.raises(ValueError, match="divisible by 4"):
    _param_shapes(_tiny(hidden_size=18, num_heads=2), x, t)


def _torch_state_dict(params, torch):
  """Our parameters under the reference's names: Dense kernels transposed, the conv kernel to [out, in, kh, kw]."""
  state = {}
  for path, leaf in flax.traverse_util.flatten_dict(params, sep=".").items():
    leaf = np.asarray(leaf)
    module, kind = path.rsplit(".", 1)
    module = module.replace("block_", "blocks.")
    if kind == "kernel":
      leaf = leaf.transpose(3, 2, 0, 1) if leaf.ndim == 4 else leaf.T
    state[f"{module}.{'bias' if kind == 'bias' else 'weight'}"] = torch.tensor(np.ascontiguousarray(leaf))
  return state


@pytest.mark.parametrize("num_classes,channels", [(CLASSES, 3), (0, 1)])
def test_torch_reference_agrees(num_classes, channels):
  torch = pytest.importorskip("torch")
  from benchmarks.torch_reference.dit import DiT as TorchDiT

  model = _tiny(channels, num_classes=num_classes)
  x, t, labels = _inputs(channels)
  t = jnp.array([-0.7, t[1]])  # an EDM-style noise label too
  params = _random_params(model, x, t, labels)
  reference = TorchDiT(in_ch=channels, image_size=SIZE, patch_size=PATCH, hidden_size=HIDDEN, depth=DEPTH,
                       num_heads=HEADS, out_ch=channels, num_classes=num_classes).eval()
  ours = jax.tree.leaves(params)
  assert sorted(p.numel() for p in reference.parameters()) == sorted(leaf.size for leaf in ours)
  reference.load_state_dict(_torch_state_dict(params, torch), strict=True)

  with torch.no_grad():
    theirs = reference(torch.tensor(np.asarray(x)).permute(0, 3, 1, 2), torch.tensor(np.asarray(t)),
                       torch.tensor(np.asarray(labels), dtype=torch.long)).permute(0, 2, 3, 1).numpy()
  y = _apply(model, params, x, t, labels)
  assert np.abs(y).max() > 0.1
  np.testing.assert_allclose(y, theirs, rtol=1e-5, atol=1e-5)

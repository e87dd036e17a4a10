"""A small convolutional classifier whose penultimate layer serves as a feature network."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallClassifier(nn.Module):
  """Three 3x3 convolutions (the last two with stride 2), a ReLU dense layer, class logits.

  x: [N, H, W, C] float32 in [-1, 1]. Returns {'features': [N, num_features]
  float32, the ReLU activations before the classifier (the FID-style features),
  'logits': [N, num_classes] float32}.
  """

  num_classes: int
  num_features: int = 128
  widths: tuple[int, int, int] = (32, 64, 64)

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), strides=(1, 1) if i == 0 else (2, 2), name=f"conv{i}")(x))
    features = nn.relu(nn.Dense(self.num_features, name="features")(jnp.reshape(x, (x.shape[0], -1))))
    return {"features": features, "logits": nn.Dense(self.num_classes, name="logits")(features)}

"""The offline feature network: a small classifier the project trains itself, cached in the data dir.

For data sets with labels and no downloaded feature network (digits, MNIST,
Fashion-MNIST, the user's labelled folders and .npz files). Training is
deterministic: a fixed seed, a fixed order (one NumPy permutation per epoch),
seeded one-pixel shifts, AdamW, no dropout; retraining gives bit-identical
parameters on the same platform. The parameters are cached as a plain .npz per
data set and image size.
"""

import dataclasses
import hashlib
import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genimg_jax import images as images_lib
from genimg_jax.data import datasets, preprocess
from genimg_jax.evaluation import cache
from genimg_jax.errors import DataError
from genimg_jax.models.classifier import SmallClassifier

# The training recipe; changing it changes the cache file name (RECIPE_VERSION).
RECIPE_VERSION = 1
SEED = 0
STEPS = 500
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-2
MAX_SHIFT = 1


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained classifier: params, class count, accuracy on the eval split, and a name that identifies it."""

  params: dict
  num_classes: int
  test_accuracy: float
  name: str


def load_split(data: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, image_size, image_size, C], labels int64 [N]) of a whole split, in file order."""
  source = datasets.open_split(data, split)
  resize = datasets.needs_resize(data)
  images, labels = [], []
  for i in range(len(source)):
    record = source[i]
    image = np.asarray(record["image"])
    images.append(preprocess.center_crop_resize(image, data.image_size, data.crop_size) if resize else image)
    labels.append(int(record.get("label", 0)))
  return np.stack(images), np.asarray(labels, np.int64)


def batch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch_size] example indices: consecutive permutations of range(num_examples), one per epoch."""
  rng = np.random.default_rng(seed)
  epochs = -(-steps * batch_size // num_examples)
  order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Moves each image [N, H, W, C] (float, background -1) by up to max_shift pixels in x and y."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=-1.0)
  dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
  rows = (dy[:, None] + np.arange(h))[:, :, None]
  cols = (dx[:, None] + np.arange(w))[:, None, :]
  return padded[np.arange(n)[:, None, None], rows, cols]


def train(images: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int = STEPS,
          batch_size: int = BATCH_SIZE, learning_rate: float = LEARNING_RATE,
          weight_decay: float = WEIGHT_DECAY, max_shift: int = MAX_SHIFT, seed: int = SEED) -> dict:
  """Trains SmallClassifier on uint8 images [N, H, W, C] and labels [N]; returns its params.

  AdamW with a cosine learning-rate decay; batches in `batch_order`, each image
  shifted by up to max_shift pixels (`random_shift`). A pure function of its
  arguments: the batch order and the shifts come from NumPy generators seeded
  with `seed` and `seed + 1`, the initial parameters from PRNGKey(seed).
  """
  model = SmallClassifier(num_classes)
  x_all = images_lib.uint8_to_float(np.asarray(images))
  y_all = np.asarray(labels, np.int32)
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
  params = model.init(jax.random.PRNGKey(seed), x_all[:1])["params"]
  opt_state = tx.init(params)

  # A Python loop over a jitted step: XLA:CPU runs these convolutions ~10x slower inside a scan.
  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(params):
      logits = model.apply({"params": params}, x)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  shifts = np.random.default_rng(seed + 1)
  for idx in batch_order(len(x_all), steps, batch_size, seed):
    params, opt_state = step(params, opt_state, random_shift(x_all[idx], max_shift, shifts), y_all[idx])
  return params


def accuracy(params: dict, num_classes: int, images: np.ndarray, labels: np.ndarray) -> float:
  """Share of images [N, H, W, C] uint8 classified as their labels [N]."""
  logits = SmallClassifier(num_classes).apply({"params": params}, images_lib.uint8_to_float(jnp.asarray(images)))
  return float(np.mean(np.asarray(jnp.argmax(logits["logits"], axis=-1)) == labels))


def cache_path(data: ml_collections.ConfigDict) -> str:
  """<data dir>/genimg_feature_nets/classifier-<data set key>-r<recipe>-<train split>.npz."""
  return os.path.join(cache.data_dir(data), cache.FEATURE_NETS_DIR,
                      f"classifier-{cache.dataset_key(data)}-r{RECIPE_VERSION}-{data.train_split}.npz")


def _fingerprint(flat: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for key in sorted(flat):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(flat[key]).tobytes())
  return digest.hexdigest()[:10]


def _named(params: dict, num_classes: int, test_accuracy: float, data) -> Classifier:
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
  name = (f"classifier[{data.name} {data.train_split} {data.image_size}x{data.image_size}, "
          f"test acc {test_accuracy:.4f}, sha256 {_fingerprint(flat)}]")
  return Classifier(params, num_classes, test_accuracy, name)


def get(data: ml_collections.ConfigDict) -> Classifier:
  """The classifier for config.data: loaded from the cache, else trained on data.train_split and cached.

  Its test accuracy is measured on data.eval_split. Raises DataError if the
  training split has fewer than two labels.
  """
  path = cache_path(data)
  if os.path.isfile(path):
    flat = cache.load_npz(path)
    num_classes, test_accuracy = int(flat.pop("num_classes")), float(flat.pop("test_accuracy"))
    params = flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    return _named(params, num_classes, test_accuracy, data)
  images, labels = load_split(data, data.train_split)
  num_classes = int(labels.max()) + 1
  if num_classes < 2:
    raise DataError("config.data", f"the classifier feature network needs labels, but {data.name} "
                    f"{data.train_split} has a single class; use the Inception network instead")
  params = train(images, labels, num_classes)
  test_accuracy = accuracy(params, num_classes, *load_split(data, data.eval_split))
  cache.save_npz(path, num_classes=num_classes, test_accuracy=test_accuracy,
                 **flax.traverse_util.flatten_dict(jax.device_get(params), sep="/"))
  return _named(params, num_classes, test_accuracy, data)


def apply_fn(num_classes: int):
  """(variables, uint8 images [N, H, W, C]) -> {'features': [N, 128], 'logits': [N, num_classes]} float32."""
  model = SmallClassifier(num_classes)

  def apply(variables, images_uint8):
    return model.apply(variables, images_lib.uint8_to_float(images_uint8))

  return apply

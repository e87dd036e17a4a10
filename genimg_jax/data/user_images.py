"""The user's own images as a tfds data set: a folder of image files or a .npz of uint8 images.

Folder: image files directly under it (flat: one class) or under one subfolder per
class (labels in sorted subfolder order; files found recursively in each). Files
that are not images (by extension) are ignored. npz: an `images` array, uint8
[N, H, W, C] (C 1 or 3) or [N, H, W], and optionally `labels`, integers [N];
read without pickle.

Every image is converted to config.data.channels (grayscale <-> RGB) and, where
its size differs or a crop is asked for, center-cropped and resized to
config.data.image_size (preprocess.center_crop_resize); a 16-bit grayscale image
is read at its full depth and scaled to 8 bits (v * 255 / 65535, rounded). Splits:
`test` holds a fixed pseudo-random holdout_fraction of the readable examples (at
least one), `train` the rest; with holdout_fraction 0 there is only `train`.

A prepared data set is stored under <data_dir>/user_images/<kind>-<key>/, where
key hashes the source's content (file bytes and relative paths) and the
preprocessing settings, so a changed file or setting prepares a new copy and
an unchanged one is reused. Hashing a large source on every start is avoided by
an index from a cheap fingerprint (paths, sizes, modification times) to the key.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from genimg_jax.data import preprocess
from genimg_jax.errors import DataError, warn
from genimg_jax.files import atomic_open

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
KINDS = ("folder", "npz")
_FORMAT = "2"  # Bump when preprocessing changes, so old copies are not reused.
_CORRUPT_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class Source:
  """What to prepare: the source and the preprocessing settings from config.data."""

  kind: str  # folder | npz
  path: str  # absolute
  image_size: int
  channels: int
  crop_size: int
  holdout_fraction: float
  skip_corrupt: bool

  def settings(self) -> dict:
    return {"format": _FORMAT, "kind": self.kind, "image_size": self.image_size,
            "channels": self.channels, "crop_size": self.crop_size,
            "holdout_fraction": self.holdout_fraction}


def list_folder(root: str) -> tuple[list[tuple[str, int]], list[str]]:
  """([(path relative to root, label)], class names) of the image files under root, sorted."""
  entries = sorted(os.listdir(root))
  files = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, e))]
  subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")]
  if files and subdirs:
    raise DataError(root, f"has both image files ({files[0]}, ...) and subfolders ({subdirs[0]}, ...); "
                    "use a flat folder of images or one subfolder per class")
  if files:
    return [(f, 0) for f in files], ["images"]
  listed = []
  for label, name in enumerate(subdirs):
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
      dirnames.sort()
      listed += [(os.path.relpath(os.path.join(dirpath, f), root), label)
                 for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
  if not listed:
    raise DataError(root, f"has no image files (extensions {', '.join(IMAGE_EXTENSIONS)})")
  return listed, subdirs


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, C], labels int64 [N]) from a .npz; DataError naming the file and key."""
  try:
    with np.load(path, allow_pickle=False) as f:
      if "images" not in f.files:
        raise DataError(path, f"has no 'images' array (it has {f.files})")
      images = f["images"]
      labels = f["labels"] if "labels" in f.files else np.zeros(len(images), np.int64)
  except (OSError, ValueError) as e:
    raise DataError(path, f"cannot read it as a .npz without pickle ({e})") from None
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
    raise DataError(f"{path}: images", f"must be a non-empty uint8 [N, H, W, C] array with C 1 or 3, "
                    f"got {images.dtype} {images.shape}")
  if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise DataError(f"{path}: labels", f"must be non-negative integers of shape ({len(images)},), "
                    f"got {labels.dtype} {labels.shape}")
  return images, labels.astype(np.int64)


def _hash_file(digest, path: str) -> None:
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)


def _source_files(source: Source) -> list[str]:
  if source.kind == "npz":
    return [source.path]
  return [os.path.join(source.path, rel) for rel, _ in list_folder(source.path)[0]]


def content_key(source: Source) -> str:
  """sha256 (hex) of the settings, the files' paths relative to the source, and their bytes."""
  digest = hashlib.sha256(json.dumps(source.settings(), sort_keys=True).encode())
  for path in _source_files(source):
    digest.update(os.path.relpath(path, source.path).encode() + b"\0")
    _hash_file(digest, path)
  return digest.hexdigest()


def _fingerprint(source: Source) -> str:
  """A cheap stand-in for content_key: settings and each file's path, size and mtime."""
  stats = [(os.path.relpath(p, source.path), os.stat(p).st_size, os.stat(p).st_mtime_ns)
           for p in _source_files(source)]
  return hashlib.sha256(json.dumps([source.settings(), stats]).encode()).hexdigest()


def cached_content_key(source: Source, index_path: str) -> str:
  """content_key, looked up by the source's fingerprint in index_path (a JSON file) when it was seen before."""
  fingerprint = _fingerprint(source)
  index = {}
  if os.path.exists(index_path):
    try:
      with open(index_path) as f:
        index = json.load(f)
    except (OSError, ValueError):
      index = {}  # A damaged index only costs a re-hash.
  if fingerprint not in index:
    index[fingerprint] = content_key(source)
    with atomic_open(index_path) as f:  # Concurrent readers never see half a file.
      json.dump(index, f)
  return index[fingerprint]


def _holdout(num: int, fraction: float) -> np.ndarray:
  """Boolean [num]: which examples form the test split (fixed seed, independent of the data)."""
  is_test = np.zeros(num, bool)
  if fraction > 0:
    count = min(num - 1, max(1, int(round(num * fraction))))
    is_test[np.random.default_rng(0).permutation(num)[:count]] = True
  return is_test


@dataclasses.dataclass
class UserImagesConfig(tfds.core.BuilderConfig):
  source: Source | None = None
  class_names: tuple[str, ...] = ()


class UserImages(tfds.core.GeneratorBasedBuilder):
  """A folder of images or a .npz, preprocessed to one square size (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    src = self.builder_config.source
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{src.kind} {src.path}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(src.image_size, src.image_size, src.channels)),
            "label": tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    src = self.builder_config.source
    if src.kind == "folder":
      listed, _ = list_folder(src.path)
      items = [(os.path.join(src.path, rel), label) for rel, label in listed]
      decode = _decode_file
    else:
      images, labels = _load_npz(src.path)
      items = [(f"{src.path}[{i}]", (images[i], int(labels[i]))) for i in range(len(images))]
      decode = _decode_array
    # Unreadable images are found (and left out) before the holdout is drawn, so no split is left empty.
    readable = _readable(items, decode, src)
    is_test = _holdout(len(readable), src.holdout_fraction)
    splits = {"train": [i for i, test in zip(readable, is_test) if not test]}
    if is_test.any():
      splits["test"] = [i for i, test in zip(readable, is_test) if test]
    return {name: self._generate_examples(items, indices, decode) for name, indices in splits.items()}

  def _generate_examples(self, items, indices, decode):
    src = self.builder_config.source
    for i in indices:
      where, payload = items[i]
      image, label = decode(where, payload, src.channels)
      image = preprocess.center_crop_resize(image, src.image_size, src.crop_size)
      # tfds encodes PIL images to PNG without TensorFlow (arrays would need it).
      yield i, {"image": PIL.Image.fromarray(image[..., 0] if src.channels == 1 else image), "label": label}


def _readable(items, decode, src: Source) -> list[int]:
  """The indices of the items that decode. Unreadable ones raise one DataError listing them, or with
  src.skip_corrupt are left out with one warning; none readable is a DataError either way."""
  readable, corrupt = [], []
  for i, (where, payload) in enumerate(items):
    try:
      decode(where, payload, src.channels)
    except (OSError, ValueError, SyntaxError) as e:  # What PIL raises on damaged files.
      corrupt.append(f"{where} ({type(e).__name__}: {e})")
    else:
      readable.append(i)
  if corrupt:
    shown = "; ".join(corrupt[:_CORRUPT_SHOWN])
    more = f" and {len(corrupt) - _CORRUPT_SHOWN} more" if len(corrupt) > _CORRUPT_SHOWN else ""
    message = f"{len(corrupt)} unreadable image(s): {shown}{more}"
    if not src.skip_corrupt:
      raise DataError(src.path, f"{message}. Fix or remove them, or set --config.data.skip_corrupt=True "
                      "to leave them out")
    if not readable:
      raise DataError(src.path, f"no readable image: {message}")
    warn(src.path, f"left out {message}")
  return readable


def _to_8_bit(image: PIL.Image.Image) -> PIL.Image.Image:
  """A 16-bit grayscale image (modes I;16*, or I with values in [0, 65535]) as mode L, value v becoming
  round(v * 255 / 65535): the full depth scaled, where PIL's convert would clip at 255. Others unchanged.
  ValueError for images of other wide modes (32-bit I, F), which have no fixed scale."""
  if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
    return image
  values = np.asarray(image)
  if image.mode == "F" or values.min() < 0 or values.max() > 65535:
    raise ValueError(f"mode {image.mode} with values in [{values.min()}, {values.max()}]: save it as an 8-bit "
                     "or 16-bit image")
  return PIL.Image.fromarray(np.round(values.astype(np.float64) * (255 / 65535)).astype(np.uint8))


def _decode_file(path: str, label: int, channels: int) -> tuple[np.ndarray, int]:
  """(uint8 [H, W, channels], label) of an image file; 16-bit images at full depth (_to_8_bit)."""
  with PIL.Image.open(path) as image:
    image.load()
    if min(image.size) == 0:
      raise ValueError("empty image")
    converted = preprocess.to_channels(_to_8_bit(image), channels)
    return np.asarray(converted).reshape(image.size[1], image.size[0], channels), label


def _decode_array(where: str, payload, channels: int) -> tuple[np.ndarray, int]:
  del where
  image, label = payload
  if image.shape[-1] != channels:
    pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    image = np.asarray(preprocess.to_channels(pil, channels)).reshape(image.shape[:2] + (channels,))
  return image, label


def make_builder(source: Source, data_dir: str) -> UserImages:
  """The (possibly already prepared) builder of `source` under data_dir/user_images/."""
  if not os.path.exists(source.path):
    raise DataError("config.data.path", f"{source.path} does not exist")
  if source.kind == "npz" and not os.path.isfile(source.path):
    raise DataError("config.data.path", f"{source.path} is not a .npz file")
  if source.kind == "folder" and not os.path.isdir(source.path):
    raise DataError("config.data.path", f"{source.path} is not a folder")
  key = cached_content_key(source, os.path.join(data_dir, "user_images", "index.json"))
  class_names = list_folder(source.path)[1] if source.kind == "folder" else _npz_class_names(source.path)
  config = UserImagesConfig(name=f"{source.kind}-{key[:20]}", source=source, class_names=tuple(class_names),
                            description=f"{source.kind} {source.path}")
  return UserImages(config=config, data_dir=data_dir, file_format="array_record")


def _npz_class_names(path: str) -> list[str]:
  """'0'..'K' for labels up to K (read without loading the images); ['0'] without labels."""
  try:
    with np.load(path, allow_pickle=False) as f:
      top = int(f["labels"].max()) if "labels" in f.files and f["labels"].size else 0
  except (OSError, ValueError) as e:
    raise DataError(path, f"cannot read it as a .npz without pickle ({e})") from None
  return [str(k) for k in range(top + 1)]

"""Data sets by config name: the catalog, finding or preparing a builder, opening a split.

config.data.name is one of CATALOG (tfds data sets, and the offline `digits`), a
CatalogEntry of the user's own tfds data set as `module:attribute`, or `folder` / `npz`
(the user's own images at config.data.path, see user_images).
Offline data sets are prepared on first use; catalog data sets that download are
prepared ahead of training with `genimg data prepare`.
"""

import contextlib
import dataclasses
import glob
import os
import shutil
import socket
import sys
import urllib.parse

import ml_collections
import tensorflow_datasets as tfds

from genimg_jax.data import digits, user_images
from genimg_jax.errors import ConfigError, DataError
from genimg_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
  """A data set by name.

  tfds_name: the tfds builder name (with config), or None for ours.
  splits: the split names it has. native_size: (H, W) of its stored images, (0, 0)
  when their sizes vary (each is center-cropped and resized; any data.crop_size fits), or
  None when ours already stores config.data.image_size. channels: of its images.
  sizes: the image sizes config.data.image_size may take (center crop + resize
  from the native size; empty: any). download_url: where tfds downloads it from
  ("" for none), probed before a download so that no network fails in seconds.
  manual: how to prepare it where it cannot download.
  """

  tfds_name: str | None
  splits: tuple[str, ...]
  native_size: tuple[int, int] | None
  channels: int
  sizes: tuple[int, ...] = ()
  download_url: str = ""
  manual: str = ""


_ELSEWHERE = ("prepare it on a machine with internet access (genimg data prepare --config ... with the same "
              "data.data_dir) and copy the data dir's {path} folder here")
CATALOG = Registry("data.name", "data set")
CATALOG.register("digits")(CatalogEntry(None, ("train", "test"), None, 1, sizes=digits.SIZES))
CATALOG.register("mnist")(CatalogEntry(
    "mnist", ("train", "test"), (28, 28), 1, download_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    manual=_ELSEWHERE))
CATALOG.register("fashion_mnist")(CatalogEntry(
    "fashion_mnist", ("train", "test"), (28, 28), 1,
    download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", manual=_ELSEWHERE))
CATALOG.register("cifar10")(CatalogEntry(
    "cifar10", ("train", "test"), (32, 32), 3, download_url="https://www.cs.toronto.edu/~kriz/", manual=_ELSEWHERE))
CATALOG.register("celeb_a")(CatalogEntry(
    "celeb_a", ("train", "validation", "test"), (218, 178), 3, download_url="https://drive.google.com/", manual=(
        "celeb_a downloads from Google Drive, which often refuses scripted downloads; if it does, "
        "download img_align_celeba.zip, list_eval_partition.txt, list_landmarks_align_celeba.txt and "
        "list_attr_celeba.txt from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, or " + _ELSEWHERE)))
_IMAGENET = dict(download_url="http://www.image-net.org/data/downsample/",
                 manual="it downloads from image-net.org, which needs an ImageNet account: " + _ELSEWHERE)
CATALOG.register("imagenet_resized/32x32")(CatalogEntry(
    "imagenet_resized/32x32", ("train", "validation"), (32, 32), 3, **_IMAGENET))
CATALOG.register("imagenet_resized/64x64")(CatalogEntry(
    "imagenet_resized/64x64", ("train", "validation"), (64, 64), 3, **_IMAGENET))
CATALOG.register("imagenet2012")(CatalogEntry(
    "imagenet2012", ("train", "validation"), (0, 0), 3, manual=(
        "tfds cannot download ImageNet: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
        "https://image-net.org, with an account) into the data dir's downloads/manual/ and run genimg data prepare "
        "(it reads them, not the network), or "
        + _ELSEWHERE)))
USER_KINDS = user_images.KINDS


def resolve_data_dir(data_dir: str) -> str:
  """config.data.data_dir, else $GENIMG_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(data_dir or os.environ.get("GENIMG_DATA_DIR", "~/tensorflow_datasets"))


def catalog_entry(data: ml_collections.ConfigDict) -> CatalogEntry | None:
  """The CatalogEntry config.data.name selects (built-in or `module:attribute`); None for the user's
  folder or npz. Raises ConfigError for an unknown name or an attribute that is no CatalogEntry."""
  if data.name in USER_KINDS:
    return None
  if ":" not in data.name and data.name not in CATALOG:
    raise ConfigError("config.data.name", f"unknown data set {data.name!r}; built-in: "
                      f"{', '.join(sorted([*CATALOG, *USER_KINDS]))}; or give your own CatalogEntry as "
                      "'module:attribute'")
  entry = CATALOG.resolve(data.name)
  if not isinstance(entry, CatalogEntry):
    raise ConfigError("config.data.name", f"{data.name!r} is not a CatalogEntry (type {type(entry).__name__})")
  return entry


def splits_of(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The split names of the data set config.data names."""
  if data.name in USER_KINDS:
    return ("train", "test") if data.holdout_fraction > 0 else ("train",)
  return catalog_entry(data).splits


def check_config(data: ml_collections.ConfigDict) -> None:
  """Checks config.data against the named data set without touching files; raises ConfigError."""
  splits = splits_of(data)
  if data.name in USER_KINDS:
    if not data.path:
      raise ConfigError("config.data.path", f"data.name={data.name!r} needs the path of your {data.name}")
  else:
    entry = catalog_entry(data)
    if data.channels != entry.channels:
      raise ConfigError("config.data.channels", f"{data.name} images have {entry.channels} channel(s), "
                        f"not {data.channels}")
    if entry.sizes and data.image_size not in entry.sizes:
      raise ConfigError("config.data.image_size", f"{data.name} comes in sizes {entry.sizes}, "
                        f"not {data.image_size}")
    if entry.native_size and min(entry.native_size) and data.crop_size > min(entry.native_size):
      raise ConfigError("config.data.crop_size", f"{data.crop_size} is larger than {data.name}'s "
                        f"{entry.native_size[0]}x{entry.native_size[1]} images")
  for field in ("train_split", "eval_split"):
    if data[field] not in splits:
      raise ConfigError(f"config.data.{field}", f"{data.name} has splits {splits}, not {data[field]!r}")


def get_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder for config.data, prepared or not."""
  check_config(data)
  data_dir = resolve_data_dir(data.data_dir)
  if data.name in USER_KINDS:
    source = user_images.Source(
        kind=data.name, path=os.path.abspath(os.path.expanduser(data.path)), image_size=data.image_size,
        channels=data.channels, crop_size=data.crop_size, holdout_fraction=data.holdout_fraction,
        skip_corrupt=data.skip_corrupt)
    return user_images.make_builder(source, data_dir)
  if data.name == "digits":
    return digits.SklearnDigits(config=f"{data.image_size}x{data.image_size}", data_dir=data_dir,
                                file_format="array_record")
  return tfds.builder(catalog_entry(data).tfds_name, data_dir=data_dir, file_format="array_record")


def needs_resize(data: ml_collections.ConfigDict) -> bool:
  """Whether the stored images must be center-cropped and resized on the fly to data.image_size."""
  entry = catalog_entry(data)
  if entry is None or entry.native_size is None:
    return False  # Ours store the configured size already.
  return bool(data.crop_size) or entry.native_size != (data.image_size, data.image_size)


def _remove_partial(builder: tfds.core.DatasetBuilder) -> None:
  """Deletes what a failed download_and_prepare left: incomplete folders and partial downloads."""
  version_parent = os.path.dirname(str(builder.data_path))
  for path in glob.glob(os.path.join(version_parent, "incomplete.*")):
    shutil.rmtree(path, ignore_errors=True)
  downloads = os.path.join(builder.data_dir_root, "downloads")
  for path in glob.glob(os.path.join(downloads, "**", "*.tmp.*"), recursive=True):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)


def _how_to_prepare(data: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> str:
  entry = catalog_entry(data)
  folder = os.path.relpath(str(builder.data_path), builder.data_dir_root).split(os.sep)[0]
  return entry.manual.format(path=os.path.join(builder.data_dir_root, folder))


def _check_reachable(url: str, timeout_s: float = 10.0) -> str | None:
  """None if url's host accepts a TCP connection within timeout_s, else the reason it did not."""
  parts = urllib.parse.urlparse(url)
  try:
    socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                             timeout=timeout_s).close()
  except OSError as e:
    return f"cannot reach {parts.hostname} ({type(e).__name__}: {e})"
  return None


def prepare(data: ml_collections.ConfigDict, download: bool = False) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder for config.data, preparing it if it is missing.

  Offline data sets (digits, the user's own) are prepared here. Catalog data sets
  that download are prepared only with download=True (`genimg data prepare`);
  otherwise, or when the download fails, DataError says which data set, which
  directory, and how to prepare it. A failed preparation leaves nothing behind.
  """
  builder = get_builder(data)
  if builder.is_prepared():
    return builder
  offline = data.name in USER_KINDS or data.name == "digits"
  if not offline and not download:
    raise DataError("config.data.name", (
        f"data set {data.name!r} is not prepared: no {builder.data_dir}. Prepare it once with "
        f"`genimg data prepare --config <this config>` (it downloads), with the same data.data_dir, "
        f"or {_how_to_prepare(data, builder)}"))
  url = None if offline else catalog_entry(data).download_url
  unreachable = _check_reachable(url) if url else None
  if unreachable:
    raise DataError("config.data.name", f"cannot download {data.name!r} into {builder.data_dir_root}: "
                    f"{unreachable}. To prepare it without internet: {_how_to_prepare(data, builder)}")
  print(f"preparing data set {data.name!r} under {builder.data_dir} (once)", file=sys.stderr)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(sys.stderr):  # tfds prints its progress; stdout is the command's output.
      builder.download_and_prepare()
  except DataError:
    _remove_partial(builder)
    raise
  except Exception as e:  # Network, manual-download and disk errors come in many types.
    _remove_partial(builder)
    again = get_builder(data)
    if again.is_prepared():  # Another process (of this run, on this file system) finished first.
      return again
    raise DataError("config.data.name", (
        f"preparing {data.name!r} into {builder.data_dir_root} failed ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); nothing was kept. "
        f"{'To prepare it without internet: ' + _how_to_prepare(data, builder) if not offline else ''}")) from None
  return builder


class CheckedSource:
  """Random access to a prepared split; a record that cannot be read raises DataError naming its files."""

  def __init__(self, source, where: str, data_dir: str):
    self._source = source
    self._where = where
    self._data_dir = data_dir

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    try:
      return self._source[index]
    except Exception as e:  # array_record/riegeli and image decoding fail in many ways.
      raise DataError(self._where, f"cannot read record {index} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:160]}); the prepared files may be truncated or "
                      f"corrupt: delete {self._data_dir} to prepare them again") from None


def open_split(data: ml_collections.ConfigDict, split: str) -> CheckedSource:
  """A random-access source of {'image': uint8 [H, W, C], 'label': int, ...} for one split.

  Images have the data set's stored size (see needs_resize). Its first and last
  records are read once here, so truncated files fail before training.
  """
  if split not in splits_of(data):
    raise DataError("config.data", f"data set {data.name!r} has no split {split!r}; it has {splits_of(data)}")
  builder = prepare(data)
  where = os.path.join(builder.data_dir, f"{builder.name}-{split}.array_record-*")
  source = CheckedSource(builder.as_data_source(split=split), where, builder.data_dir)
  source[0], source[len(source) - 1]  # pylint: disable=pointless-statement
  return source

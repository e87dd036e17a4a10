"""The offline data set: scikit-learn's bundled 8x8 handwritten digits as a tfds builder.

1797 grayscale images (UCI optdigits test set, 0..16 intensities), shipped inside
scikit-learn so it needs no download. Pixels are scaled to uint8 by
round(v * 255 / 16); the 16x16 config then upsamples with PIL's bilinear filter.
Splits: `train` = the first 1497 images, `test` = the last 300 (sklearn order).
"""

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

NUM_TRAIN = 1497
SIZES = (8, 16)


def digits_uint8(size: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as (images [N, size, size, 1] uint8, labels [N] int64), sklearn order."""
  from sklearn.datasets import load_digits  # Imported here: only preparing the data needs it.

  raw = load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)
  if size != 8:
    images = np.stack([np.asarray(PIL.Image.fromarray(im).resize((size, size), PIL.Image.BILINEAR))
                       for im in images])
  return images[..., None], raw.target.astype(np.int64)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits, at 8x8 or upsampled to 16x16 (configs '8x8', '16x16')."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"{s}x{s}") for s in SIZES]

  @property
  def image_size(self) -> int:
    return int(self.builder_config.name.split("x")[0])

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {"train": self._generate_examples(0, NUM_TRAIN),
            "test": self._generate_examples(NUM_TRAIN, None)}

  def _generate_examples(self, start, stop):
    images, labels = digits_uint8(self.image_size)
    for i in range(len(images))[start:stop]:
      yield i, {"image": PIL.Image.fromarray(images[i, :, :, 0]), "label": int(labels[i])}

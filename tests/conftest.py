import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain reads absl flags.


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data dir shared by all tests; data sets are prepared into it on first use."""
  return str(tmp_path_factory.mktemp("tfds"))

"""Data sets (tfds builders, prepared to array_record) and grain input pipelines."""

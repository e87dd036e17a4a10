"""The generic trainer: the jitted loop, checkpoints, a run's workdir and logs."""

# Installs the reader of latent runs' first stages into methods/latent.py, which may not read runs itself.
from genimg_jax.train import first_stage  # noqa: F401

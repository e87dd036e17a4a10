"""The generic trainer: the jitted loop, checkpoints, a run's workdir and logs."""

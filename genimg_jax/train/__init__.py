"""The generic trainer: mesh and sharding, the jitted loop, checkpoints, logs."""

"""Evaluation: sample grids and held-out metrics read from checkpoints."""

"""Flax linen modules. Models import nothing from methods, train or evaluation."""

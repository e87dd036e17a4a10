"""Running a method's pure functions on devices: the mesh and shardings, joining processes,
process-wide JAX settings, and the jitted functions that training and evaluation share.
Imports nothing from train/ or evaluation/."""

"""Diffusion and flow processes: one module per process with its schedule, objective, samplers and
their NFE (ddpm, edm, flow), plus what they share: the Process and Sampler records (process, samplers),
classifier-free guidance (guidance) and likelihoods (likelihood)."""

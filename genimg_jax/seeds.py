"""The run's random keys: one root key from the seed, split by purpose."""

import jax


def root_keys(seed: int) -> dict[str, jax.Array]:
  """Independent keys for init, train, sample and eval: fold_in(PRNGKey(seed), 0..3)."""
  root = jax.random.PRNGKey(seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(("init", "train", "sample", "eval"))}

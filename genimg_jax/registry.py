"""Choosing a component by name: a built-in name, or `module:attribute` for the user's own."""

import importlib
import os
import sys
from typing import Any, Mapping

from genimg_jax.errors import ConfigError


def lookup(field: str, name: str, builtins: Mapping[str, Any]) -> Any:
  """Returns builtins[name], or the attribute named by an import path `module:attr`.

  An import path is resolved like `python -m` would: the current directory first.
  Raises ConfigError naming `field` when the name is unknown or cannot be imported.
  """
  if ":" not in name:
    if name not in builtins:
      raise ConfigError(field, f"unknown name {name!r}; built-in: {', '.join(sorted(builtins))}; "
                        "or give your own as 'module:function'")
    return builtins[name]
  module_name, _, attr = name.partition(":")
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    raise ConfigError(field, f"cannot import module {module_name!r} ({e})") from None
  if not hasattr(module, attr):
    raise ConfigError(field, f"module {module_name!r} ({module.__file__}) has no attribute {attr!r}")
  return getattr(module, attr)


class Registry(dict):
  """Built-in components of one kind by name (samplers, architectures), each added where it is
  defined by `@REGISTRY.register("name")`. Config checks take the allowed names from it."""

  def __init__(self, field: str, kind: str):
    super().__init__()
    self.field, self.kind = field, kind

  def register(self, name: str):
    """Decorator: registers the decorated function under `name` and returns it unchanged."""
    def add(component):
      if name in self:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self[name] = component
      return component

    return add

  def get_checked(self, name: str, field: str | None = None) -> Any:
    """self[name]; ConfigError naming `field` (default: the registry's) and listing the names otherwise."""
    if name not in self:
      raise ConfigError(f"config.{field or self.field}", f"unknown {self.kind} {name!r}; choose one of "
                        f"{', '.join(sorted(self))}")
    return self[name]

"""Choosing a component by name: the one way every kind of component (method, loss, sampler,
architecture, process, data set, ...) is added and selected.

A built-in component is registered where it is defined, `@REGISTRY.register("name")`; a config
selects it by that name, or selects the user's own by the import path `module:attribute`, which
`resolve` imports. A component that reads config fields of its own (an architecture's widths)
registers them with their defaults, `@REGISTRY.register("name", fields={...})`, and its method's
default config takes them from `config_fields()`.
"""

import importlib
import os
import sys
from typing import Any, Callable, Mapping

from genimg_jax.errors import ConfigError


def is_import_path(text: Any) -> bool:
  """Whether `text` is a string `resolve` would import: `module:attribute`, dotted identifiers."""
  if not isinstance(text, str) or ":" not in text:
    return False
  module_name, _, attr = text.partition(":")
  return all(part.isidentifier() for part in module_name.split(".")) and attr.isidentifier()


def import_attribute(field: str, path: str) -> Any:
  """The attribute named by `module:attribute`, imported like `python -m` would: the current directory
  first. Raises ConfigError naming `field` (e.g. "config.loss.name") when it cannot be imported."""
  if not is_import_path(path):
    raise ConfigError(field, f"{path!r} is not an import path 'module:attribute'")
  module_name, _, attr = path.partition(":")
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
  """Built-in components of one kind by name; `field` is the config field that selects one (for
  messages, e.g. "sample.sampler") and `kind` what they are ("flow sampler")."""

  def __init__(self, field: str, kind: str):
    super().__init__()
    self.field, self.kind = field, kind
    self.fields: dict[str, Mapping[str, Any]] = {}

  def register(self, name: str, *, fields: Mapping[str, Any] | None = None) -> Callable[[Any], Any]:
    """Decorator: registers the decorated component under `name` and returns it unchanged.

    fields: the config fields (name -> default) the component reads besides those its method shares;
    a field two components both own must have one default.
    """
    def add(component):
      if name in self:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      for key, default in (fields or {}).items():
        for other, owned in self.fields.items():
          if key in owned and owned[key] != default:
            raise ValueError(f"{self.kind} {name!r}: field {key!r} defaults to {default!r}, but {other!r} "
                             f"owns it with {owned[key]!r}")
      self[name] = component
      self.fields[name] = dict(fields or {})
      return component

    return add

  def resolve(self, name: str, field: str | None = None) -> Any:
    """The component registered as `name`, or the user's own given as `module:attribute`.

    Raises ConfigError naming config.<field> (default: the registry's) when the name is neither.
    """
    field = f"config.{field or self.field}"
    if ":" in name:
      return import_attribute(field, name)
    if name not in self:
      raise ConfigError(field, f"unknown {self.kind} {name!r}; built-in: {', '.join(sorted(self))}; "
                        "or give your own as 'module:attribute'")
    return self[name]

  def config_fields(self) -> dict[str, Any]:
    """Every registered component's own config fields with their defaults, in registration order."""
    merged = {}
    for owned in self.fields.values():
      merged.update(owned)
    return merged

"""The stage registry: stage type name -> stage class, found by discovery.

The only engine module that imports ``stages``: discovery imports every module or package under
``stages/`` and every ``tokenmill.stages`` entry point, whose ``@register_stage`` classes land here.
The spec's union of stage configs, the DAG, the runner, the report and the CLI all read this
registry, so adding a stage never means editing the engine.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.stage_api import Stage

_REGISTRY: dict[str, type[Stage]] = {}
_DISCOVERED = False


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available under its config's ``type`` literal."""
    type_field = cls.config_model.model_fields["type"]
    literal_args = getattr(type_field.annotation, "__args__", ())
    if len(literal_args) != 1 or not isinstance(literal_args[0], str):
        raise TypeError(f"{cls.__name__}.config_model must declare type: Literal['<name>']")
    name = literal_args[0]
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"stage type {name!r} registered twice ({existing.__name__}, {cls.__name__})")
    cls.type_name = name
    _REGISTRY[name] = cls
    return cls


def discover_stages() -> dict[str, type[Stage]]:
    """Import every module of the ``stages`` package and ``tokenmill.stages`` entry points, once."""
    global _DISCOVERED
    if not _DISCOVERED:
        import stages

        for mod in pkgutil.iter_modules(stages.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"stages.{mod.name}")
        for ep in entry_points(group="tokenmill.stages"):
            ep.load()
        _DISCOVERED = True
    return dict(sorted(_REGISTRY.items()))


def stage_class(type_name: str) -> type[Stage]:
    return discover_stages()[type_name]

"""Decorator registry for methods and datasets (timm-style `register_*` / `list_*`).

Plugin files in `methods/` and `datasets/` register their classes on import; resolving a name
loads the plugin folders on demand (see `harness.plugins`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from harness.errors import UnknownNameError

T = TypeVar("T")

_METHODS: dict[str, type] = {}
_DATASETS: dict[str, type] = {}


def _register(table: dict[str, type], kind: str, name: str) -> Callable[[type[T]], type[T]]:
    def decorator(cls: type[T]) -> type[T]:
        existing = table.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} '{name}' is registered twice ({existing} and {cls})")
        cls.name = name  # type: ignore[attr-defined]
        table[name] = cls
        return cls

    return decorator


def register_method(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a `harness.method.Method` subclass under `name`."""
    return _register(_METHODS, "method", name)


def register_dataset(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a `harness.data.base.DatasetPlugin` subclass under `name`."""
    return _register(_DATASETS, "dataset", name)


def _ensure_loaded() -> None:
    from harness import plugins

    plugins.load_all()


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching an fnmatch pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching an fnmatch pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def method_class(name: str) -> Any:
    """The class registered as method `name`; unknown names raise with the nearest names."""
    _ensure_loaded()
    if name not in _METHODS:  # asked for while discovery runs: load its file on demand
        from harness import plugins

        plugins.load_named("methods", name)
    if name not in _METHODS:
        raise UnknownNameError("method", name, _METHODS)
    return _METHODS[name]


def dataset_class(name: str) -> Any:
    """The class registered as dataset `name`; unknown names raise with the nearest names."""
    _ensure_loaded()
    if name not in _DATASETS:
        raise UnknownNameError("dataset", name, _DATASETS)
    return _DATASETS[name]

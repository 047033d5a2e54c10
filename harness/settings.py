"""Types of grid settings and method parameters, checked when a grid is resolved (before any
run folder is written), so that `epochs: four` is refused at once, naming key and fix."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from harness.errors import HarnessError

DEFAULT_PROTOCOL: dict[str, Any] = {"split": "lt_train", "extra_splits": [], "assign": "kmeans",
                                    "matching": "hungarian", "n_init": 10, "max_iter": 300}
PROTOCOL_TYPES: dict[str, Any] = {"split": str, "extra_splits": list[str], "assign": str,
                                  "matching": str, "n_init": int, "max_iter": int,
                                  "K": int | None}
AT_LEAST_ONE = ("n_init", "max_iter", "K", "image_size", "cpu_threads", "world_size")


def matches(value: Any, hint: Any) -> bool:
    """Whether a YAML/JSON value fits a type hint (ints count as floats, bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        allowed = (int,) if hint is int else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches, value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def describe(hint: Any) -> str:
    """A type hint in words: 'a whole number', 'a list of whole numbers or null'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if hint in (list, tuple) or origin in (list, tuple):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if hint is dict or origin is dict:
        return "a mapping"
    words = {type(None): "null", bool: "true or false", int: "a whole number",
             float: "a number", str: "a text"}
    return words.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _refuse(where: str, key: str, value: Any, hint: Any) -> HarnessError:
    hint_text = describe(hint)
    note = ""
    if isinstance(value, str):
        try:
            float(value)
            note = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-3)"
        except ValueError:
            pass
    return HarnessError(f"{where}: {key} = {value!r} must be {hint_text}{note}")


def check_params(params_cls: type, values: dict[str, Any], where: str) -> None:
    """Refuse parameters whose values do not fit the types of the method's Params fields."""
    hints = typing.get_type_hints(params_cls)
    for f in dataclasses.fields(params_cls):
        if f.name in values and not matches(values[f.name], hints[f.name]):
            raise _refuse(where, f"params.{f.name}", values[f.name], hints[f.name])


def check_settings(settings: dict[str, Any], where: str) -> None:
    """Refuse `data`, `protocol`, `eval_seeds`, `cpu_threads`, `world_size` and `profile` values of
    the wrong type."""
    for block in ("params", "data", "protocol"):
        if not isinstance(settings.get(block, {}), dict):
            raise HarnessError(f"{where}: {block} must be a mapping of keys to values")
    checks = [(f"protocol.{k}", v, PROTOCOL_TYPES.get(k)) for k, v in
              (settings.get("protocol") or {}).items()]
    checks.append(("data.image_size", (settings.get("data") or {}).get("image_size", 32), int))
    checks.append(("cpu_threads", settings.get("cpu_threads", 1), int))
    checks.append(("world_size", settings.get("world_size", 1), int))
    checks.append(("profile", settings.get("profile", ""), str))
    for key, value, hint in checks:
        if hint is None:
            raise HarnessError(f"{where}: unknown protocol key '{key}'; known: "
                               f"{', '.join(PROTOCOL_TYPES)}")
        if not matches(value, hint):
            raise _refuse(where, key, value, hint)
        if key.rsplit(".", 1)[-1] in AT_LEAST_ONE and value is not None and value < 1:
            raise HarnessError(f"{where}: {key} = {value!r} must be at least 1")
    if "eval_seeds" in settings:
        from harness.seeding import eval_seed_list

        try:
            seeds = eval_seed_list(settings["eval_seeds"])
        except (ValueError, TypeError, AttributeError):
            seeds = []
        if not seeds:
            raise HarnessError(f"{where}: eval_seeds = {settings['eval_seeds']!r}: use "
                               "conmix10, firstN (N >= 1) or a list of whole numbers")


def params_from_dict(params_cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a Params dataclass, with a clear error for unknown keys and ill-typed values."""
    names = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise HarnessError(f"{where}: unknown parameter(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(names))}")
    check_params(params_cls, values, where)
    return params_cls(**values)

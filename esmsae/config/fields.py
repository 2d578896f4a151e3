"""The command line and the settings page, both generated from the config dataclasses
(:mod:`esmsae.config`): argparse options with their help and choices, and the page's field specs."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from esmsae.config import ConfigError, T, to_dict


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    """The field's type; ``X | None`` is X (None is then only ever the default)."""
    typ = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if type(None) in typing.get_args(typ) and len(args) == 1:
        return args[0]
    return typ


def parse_int_list(s: str, field_name: str = "value") -> list[int]:
    """'3, 6' -> [3, 6]; anything that is not a comma-separated list of whole numbers is an
    error naming the field (never silently dropped)."""
    parts = [x for x in s.replace(" ", "").split(",") if x != ""]
    try:
        return [int(x) for x in parts]
    except ValueError:
        raise ConfigError(f"{field_name}: expected comma-separated whole numbers, got {s!r}") from None


def _parse_int_list(s: str) -> list[int]:
    try:
        return parse_int_list(s)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e


def _parse_bool(s: str) -> bool:
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), prefix: str = "",
             keep_defaults: bool = False) -> None:
    """Add one ``--option`` (or argument) per dataclass field, with its help text and default.

    A pipeline section leaves options not given off the namespace (``keep_defaults=False``), so
    that :func:`from_args` can lay them over a ``--config`` file; a command's own options
    (:mod:`esmsae.config.commands`) put their defaults on it."""
    group = parser.add_argument_group(f"{cls.__name__} ({(cls.__doc__ or '').strip().splitlines()[0]})")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": prefix + f.name, "default": default if keep_defaults else argparse.SUPPRESS}
        helptext = f.metadata.get("help", "")
        if typ in (list, "list"):
            kw["nargs"] = "+"
            kw["type"] = str
            kw["metavar"] = "PATH"
        elif typ in (list[int], "list[int]"):
            kw["type"] = _parse_int_list
            kw["metavar"] = "N[,N...]"
        elif typ in (bool, "bool"):
            kw["type"] = _parse_bool
            kw["nargs"] = "?"
            kw["const"] = True
            kw["metavar"] = "BOOL"
        else:
            kw["type"] = {int: int, float: float, str: str, "int": int, "float": float, "str": str}[typ]
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.metadata.get("positional"):
            del kw["dest"], kw["default"]  # argparse names a positional by its dest
            if kw.get("nargs") != "+":
                kw.pop("nargs", None)
            kw["help"] = helptext
            group.add_argument(prefix + f.name, **kw)
            continue
        if f.metadata.get("required"):
            kw["required"] = True
            kw["help"] = helptext
        else:
            kw["help"] = f"{helptext} (default: {default!r})"
        flag = f.metadata.get("flag", f.name)
        group.add_argument("--" + (prefix + flag).replace("_", "-"), **kw)


def from_args(cls: type[T], ns: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """Build ``cls`` from parsed args; options not given keep ``base``'s values (or defaults)."""
    d = to_dict(base) if base is not None else {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(ns, prefix + f.name):
            d[f.name] = getattr(ns, prefix + f.name)
    return cls(**d)


@dataclass
class FieldSpec:
    """One config field as the settings page draws it."""

    section: str
    name: str
    kind: str  # int | float | str | bool | choice | int_list | path_list
    default: Any
    help: str
    choices: tuple | None = None
    label: str = ""
    main: bool = False
    zero: str = ""  # what 0 means, shown instead of 0 ("auto", "all")


def field_specs(cls: type, section: str) -> list[FieldSpec]:
    """The fields of a config dataclass with their kinds, defaults, help texts and choices."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("ui", True):
            continue
        typ = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        choices = f.metadata.get("ui_choices") or f.metadata.get("choices")
        kind = ("choice" if choices else {int: "int", float: "float", str: "str", bool: "bool"}.get(typ)
                or ("int_list" if typ in (list[int], "list[int]") else "path_list"))
        label = f.metadata.get("label") or f.name.replace("_", " ").capitalize()
        out.append(FieldSpec(section, f.name, kind, default, f.metadata.get("help", ""), choices, label,
                             bool(f.metadata.get("main")), f.metadata.get("zero", "")))
    return out


def parse_zero_number(text: str, spec: FieldSpec) -> int | float:
    """A settings-page number whose 0 has a name: the name (or nothing) is 0, else a number of
    the field's kind; anything else is an error naming the field."""
    t = (text or "").strip()
    if not t or t.lower() == spec.zero.lower():
        return 0
    try:
        v = int(t) if spec.kind == "int" else float(t)
    except ValueError:
        raise ConfigError(f"{spec.label}: expected {'a whole number' if spec.kind == 'int' else 'a number'} or "
                          f"{spec.zero!r}, got {t!r}") from None
    return v

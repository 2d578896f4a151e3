"""What every config dataclass shares: the error, the field helper ``opt``, the checks, the names
of sites / architectures / normalisations, and the JSON round trip."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SITES = ("resid", "mlp", "attn")
ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu")
TRAINABLE_ARCHITECTURES = ("topk", "batchtopk", "relu")  # jumprelu: imported (SAELens) SAEs only
# Per-token normalisations of published SAEs (esmsae.published): layernorm_eps is InterProt's,
# SAELens' "layer_norm" and Biohub's z-score, (x - mean) / (unbiased std + 1e-5); layernorm_biased_eps
# is esm-sae's (biased std + 1e-5); unit_norm_sqrt_d is SAELens' constant_norm_rescale, x * sqrt(d) / |x|.
TOKEN_NORMALIZATIONS = ("layernorm", "layernorm_eps", "layernorm_biased_eps", "unit_norm_sqrt_d")
NORMALIZATIONS = (
    "none",
    "scalar",
    "layernorm",
    "center",
    "center_scalar",
    "layernorm_eps",
    "layernorm_biased_eps",
    "unit_norm_sqrt_d",
)
FAMILIES = ("auto", "esm2", "esmc", "unirep")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def opt(default: Any, help: str, choices: tuple | None = None, flag: str | None = None, ui: bool = True,
        ui_choices: tuple | None = None, label: str = "", main: bool = False, zero: str = "",
        positional: bool = False, required: bool = False, **kw: Any) -> Any:
    """A dataclass field with CLI/UI help text (optional choices, optional CLI flag name).

    For the settings page: ``label`` is the human label (default: the field name in words),
    ``main`` puts the field on the form's front rather than under "Advanced settings", ``zero``
    names what 0 means ("auto", "all") so the form shows that word instead of 0, ``ui=False``
    keeps a field off the page and ``ui_choices`` narrows the choices it offers. On the command line
    ``positional`` makes the field an argument rather than an ``--option`` and ``required`` an option
    that must be given."""
    meta: dict[str, Any] = {"help": help, "label": label, "main": main, "zero": zero}
    if positional:
        meta["positional"] = True
    if required:
        meta["required"] = True
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = choices
    if not ui:
        meta["ui"] = False
    if ui_choices:
        meta["ui_choices"] = ui_choices
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{name}: {msg}")


def _check_choices(obj: Any) -> None:
    """Choices of every field, and no NaN / infinity in any float field (``nan >= 0`` is False, but
    ``nan <= 1`` style checks would let it through)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{type(obj).__name__}.{f.name}: must be a finite number, got {v!r}")
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise ConfigError(
                f"{type(obj).__name__}.{f.name}: {getattr(obj, f.name)!r} is not one of {list(choices)}"
            )


def layer_range(site: str, n_layers: int) -> tuple[int, int]:
    """Valid layers of a hook site on an ``n_layers``-block model (the one rule, used by the model
    adapters and the checkpoint check): resid 0..n (0 = embeddings), mlp / attn 1..n."""
    return (0 if site == "resid" else 1), n_layers


DENSE_FREQ = 0.1  # a latent firing on more than this fraction of tokens is "dense" (evaluation card and index)


def hook_name(layer: int, site: str) -> str:
    return f"L{layer}_{site}"


# ---------------------------------------------------------------- JSON round trip

def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temp file, then rename)."""
    from esmsae.core.atomic import (
        write_text_atomic,  # a temp name per writer: a job and the app may write one file at once
    )

    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_json(cls: type[T], path: str | os.PathLike) -> T:
    return from_dict(cls, json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- argparse generation


# ---------------------------------------------------------------- UI generation



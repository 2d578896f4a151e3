"""Configuration dataclasses: one per concern, validated in ``__post_init__``; ``base.py`` (shared
helpers and the JSON round trip), ``model.py`` (protein LM, hook, embedding, LM training), ``sae.py``
(SAE, training, evaluation), ``index.py`` (the feature index), all re-exported here; ``commands.py``
(the options of every other command: ``import``, ``match``, ``steer``, ``demo`` ...), and ``fields.py``,
which generates the command line (every command's options) and the app's settings page from them.

Every dataclass round-trips through JSON (:func:`to_dict` / :func:`from_dict`) and
generates its own argparse options (:func:`esmsae.config.fields.add_args` / :func:`~esmsae.config.fields.from_args`),
so the CLI and the app's settings page are built from the same definitions.
"""

from __future__ import annotations

from esmsae.config.base import (
    ARCHITECTURES,
    DENSE_FREQ,
    FAMILIES,
    NORMALIZATIONS,
    SITES,
    TOKEN_NORMALIZATIONS,
    TRAINABLE_ARCHITECTURES,
    ConfigError,
    T,
    _check,
    _check_choices,
    from_dict,
    hook_name,
    layer_range,
    load_json,
    opt,
    save_json,
    to_dict,
)
from esmsae.config.index import IndexConfig
from esmsae.config.model import (
    DEVICE_RE,
    EmbedConfig,
    HookConfig,
    LMTrainConfig,
    ModelConfig,
    auto_batch_tokens,
    check_device,
    resolve_device,
)
from esmsae.config.sae import EvalConfig, SAEConfig, TrainConfig

__all__ = [
    "ARCHITECTURES",
    "ConfigError",
    "DENSE_FREQ",
    "DEVICE_RE",
    "EmbedConfig",
    "EvalConfig",
    "FAMILIES",
    "HookConfig",
    "IndexConfig",
    "LMTrainConfig",
    "ModelConfig",
    "NORMALIZATIONS",
    "SAEConfig",
    "SITES",
    "T",
    "TOKEN_NORMALIZATIONS",
    "TRAINABLE_ARCHITECTURES",
    "TrainConfig",
    "_check",
    "_check_choices",
    "auto_batch_tokens",
    "check_device",
    "from_dict",
    "hook_name",
    "layer_range",
    "load_json",
    "opt",
    "resolve_device",
    "save_json",
    "to_dict",
]

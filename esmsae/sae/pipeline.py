"""Orchestration shared by the CLI, the app's jobs and the demo builder: the config sections of
each command and ``embed -> train -> evaluate`` in one call. Nothing here imports torch at
module level, and nothing here imports :mod:`esmsae.cli` (no cycles)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from esmsae.config import EmbedConfig, EvalConfig, HookConfig, IndexConfig, ModelConfig, SAEConfig, TrainConfig

SECTIONS = {
    "model": ModelConfig,
    "hook": HookConfig,
    "embed": EmbedConfig,
    "sae": SAEConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "index": IndexConfig,
}
SKIPS: dict[str, dict[str, tuple[str, ...]]] = {
    "embed": {"model": (), "hook": (), "embed": ()},
    "train": {"sae": (), "train": ()},
    "evaluate": {"eval": ()},
    # one --device (ModelConfig's) feeds every section: from_args reads ns.device for train and eval too
    "pipeline": {
        "model": (),
        "hook": (),
        "embed": ("store",),
        "sae": (),
        "train": ("store", "out", "layers", "device", "parallel"),
        "eval": ("seed", "device"),
    },
    "index": {"index": ()},
}


def run_pipeline(
    cfg: dict, out: str, progress: bool = True, on_stage=lambda stage: None, should_stop=None
) -> list[Path]:
    """embed -> train -> evaluate into the run folder ``out``; ``on_stage(name)`` is told as each
    starts; ``should_stop`` is handed to training (checkpoint, then ``TrainInterrupted``)."""
    from esmsae.sae.evaluate import evaluate
    from esmsae.sae.train import train
    from esmsae.store.activations import embed_fasta

    outp = Path(out)
    on_stage("embed")
    embed = EmbedConfig(**{**asdict(cfg["embed"]), "store": str(outp / "store")})
    store = embed_fasta(embed, cfg["model"], cfg["hook"], progress=progress)
    on_stage("train")
    tcfg = TrainConfig(
        **{**asdict(cfg["train"]), "store": str(store), "out": str(outp), "layers": list(cfg["hook"].layers)}
    )
    dirs = train(tcfg, cfg["sae"], progress=progress, should_stop=should_stop)
    on_stage("evaluate")
    ecfg = EvalConfig(**{**asdict(cfg["eval"]), "seed": tcfg.seed})
    for d in dirs:
        card = evaluate(d, ecfg)
        print(json.dumps(summary(card)))
    return dirs


def summary(card: dict) -> dict:
    keys = ("hook", "n_tokens", "fvu", "mse", "l0", "dead_fraction", "dense_fraction")
    s = {k: card[k] for k in keys if k in card}
    if "fvu_aa_lookup" in card:
        s["fvu_aa_lookup"] = card["fvu_aa_lookup"]["fvu"]
    if "downstream" in card:
        d = card["downstream"]
        s.update({k: d[k] for k in ("ce_orig", "ce_sae", "ce_mean", "delta_ce_nats", "pct_loss_recovered") if k in d})
        protocol = ("ce_orig", "ce_sae", "ce_mean", "ce_unigram", "ce_zero", "delta_ce_nats", "pct_loss_recovered",
                    "pct_recovered_vs_zero_ablation")
        for name in ("next", "masked"):
            if name in d:
                s[name] = {k: d[name][k] for k in protocol if k in d[name]}
    return s

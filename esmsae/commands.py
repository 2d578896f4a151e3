"""The CLI's commands, one small function each (``cmd_<name>(ns)``, or ``cmd_<name>(ns, cfg)`` for the
commands whose options are generated from the config dataclasses), and the dispatch tables
:mod:`esmsae.cli` uses. Each imports what it needs when it runs, so ``--help`` stays light."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from esmsae.config import ConfigError, LMTrainConfig, TrainConfig
from esmsae.config.fields import from_args
from esmsae.sae.pipeline import run_pipeline, summary


def cmd_match(ns: argparse.Namespace) -> int:
    import pandas as pd

    from esmsae.analysis.match import match_saes, untrained_like, with_chance
    from esmsae.core.fasta import read_proteins
    from esmsae.published.load import load_sae

    seqs = (
        [p.sequence for i, p in zip(range(ns.max_proteins), read_proteins(ns.fasta, on_invalid="skip"))]
        if ns.fasta
        else []
    )
    sae_a, sae_b = load_sae(ns.a), load_sae(ns.b)
    results = match_saes(sae_a, sae_b, seqs, ns.top)
    # every rate next to its chance level: the same comparison against an untrained SAE of B's shape
    rows = with_chance(results, match_saes(sae_a, untrained_like(sae_b), seqs, ns.top), ns.threshold)
    print(json.dumps(rows, indent=2))
    if ns.out:
        from esmsae.core.atomic import write_atomic

        pairs = pd.concat([r.pairs.assign(method=r.method) for r in results])
        write_atomic(ns.out, lambda tmp: pairs.to_csv(tmp, index=False), "match table")
    if ns.index:
        from esmsae.analysis.match import store_matches

        n = store_matches(ns.index, results, ns.name or ns.b, ns.threshold, rows)
        print(f"stored {n} pairs in {ns.index}", file=sys.stderr)
    return 0


def cmd_import(ns: argparse.Namespace) -> int:
    from esmsae.published.convert import import_sae

    out = import_sae(
        ns.source, ns.out, ns.format, layer=ns.layer, k=ns.k, model=ns.model, file=ns.file, input_norm=ns.input_norm
    )
    from esmsae.sae.checkpoint import read_cfg

    meta = read_cfg(out)
    print(
        json.dumps(
            {
                "checkpoint": str(out),
                "format": meta["provenance"]["format"],
                "base_model": meta["base_model"]["name"],
                "layer": meta["layer"],
                "site": meta["site"],
                "n_latents": meta["sae"]["n_latents"],
                "architecture": meta["sae"]["architecture"],
                "k": meta["sae"]["k"],
                "notes": meta["provenance"]["notes"],
            },
            indent=2,
        )
    )
    return 0


def cmd_steer(ns: argparse.Namespace) -> int:
    from esmsae.analysis.model import load_model
    from esmsae.analysis.steer import Edit, steer
    from esmsae.core.fasta import write_fasta
    from esmsae.published.load import load_sae

    sae = load_sae(ns.sae)
    edit = Edit(ns.feature, ns.edit, ns.value, ns.where, ns.start, ns.end)
    if ns.generate:
        from esmsae.analysis.steer import generate

        d = generate(
            load_model(sae.meta["base_model"]["name"]),
            sae,
            ns.sequence,
            edit,
            ns.generate,
            ns.rounds,
            ns.mask_frac,
            ns.temperature,
            ns.seed,
        )
        print(
            json.dumps(
                {
                    **d.summary(),
                    "designs": [
                        {"sequence": s, "fires": f, "target_max": m, "pppl": p}
                        for s, f, m, p in zip(d.sequences, d.fires, d.target_max, d.pppl)
                    ],
                },
                indent=2,
            )
        )
        if ns.fasta_out:
            Path(ns.fasta_out).write_text(d.fasta())
        return 0
    res = steer(load_model(sae.meta["base_model"]["name"]), sae, ns.sequence, edit)
    print(json.dumps({"steered_sequence": res.steered_sequence, **res.summary()}, indent=2))
    if ns.fasta_out:
        write_fasta(ns.fasta_out, [(f"steered feature={ns.feature} {ns.edit}={ns.value}", res.steered_sequence)])
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from esmsae.published.convert import export_sae

    print(f"exported: {export_sae(ns.checkpoint, ns.out, ns.format)}")
    return 0


def cmd_search(ns: argparse.Namespace) -> int:
    from esmsae.index.reader import FeatureIndex

    df = FeatureIndex(ns.index).features(search=ns.query, hide_dead=False, limit=ns.limit)
    cols = [c for c in ("feature", "label", "description", "best_concept", "best_f1") if c in df]
    print(df[cols].to_string(index=False) if len(df) else f"no feature matches {ns.query!r}")
    return 0


def cmd_probe(ns: argparse.Namespace) -> int:
    from esmsae.analysis.probe import probe_checkpoint

    df = probe_checkpoint(ns.checkpoint, ns.shared or None, ns.n_train, ns.n_test, ns.seed)
    print(df[["task", "metric", "representation", "value", "minus_window10"]].to_string(index=False))
    return 0


def cmd_reference_stats(ns: argparse.Namespace) -> int:
    from esmsae.index.reference import write_reference_stats

    print(json.dumps(write_reference_stats(ns.checkpoint, ns.index)))
    return 0


def cmd_train_lm(ns: argparse.Namespace) -> int:
    from esmsae.lm.train import train_lm

    lcfg = from_args(LMTrainConfig, ns)
    report = train_lm(lcfg)
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "masked_ppl",
                    "masked_unigram_ppl",
                    "heldout_ppl",
                    "unigram_ppl",
                    "steps",
                    "tokens_seen",
                    "finished",
                )
            }
        )
    )
    return 0


def cmd_job(ns: argparse.Namespace) -> int:
    from esmsae.app.jobs import run_job

    return run_job(ns.run_dir)


def cmd_demo(ns: argparse.Namespace) -> int:
    from esmsae.demo.build import build_demo

    print(json.dumps(build_demo(ns), indent=2, default=str))
    return 0


def cmd_init_model(ns: argparse.Namespace) -> int:
    from esmsae.lm.plm import save_initial_esm2

    print(save_initial_esm2(ns.config_dir, ns.out, ns.seed))
    return 0


def cmd_embed(ns: argparse.Namespace, cfg: dict) -> int:
    from esmsae.store.activations import embed_fasta

    path = embed_fasta(cfg["embed"], cfg["model"], cfg["hook"])
    print(f"activation store: {path}")
    return 0


def cmd_train(ns: argparse.Namespace, cfg: dict) -> int:
    from esmsae.sae.train import train

    tcfg = cfg["train"]
    if ns.npy_dir:
        from esmsae.store.npy import store_from_npy

        if not tcfg.out:
            raise ConfigError("TrainConfig.out: give the run folder (--out)")
        store = store_from_npy(ns.npy_dir, Path(tcfg.out) / "npy_store", ns.npy_layer, ns.npy_site, ns.npy_model)
        tcfg = TrainConfig(**{**asdict(tcfg), "store": str(store), "layers": [ns.npy_layer]})
    for d in train(tcfg, cfg["sae"]):
        print(f"checkpoint: {d}")
    return 0


def cmd_evaluate(ns: argparse.Namespace, cfg: dict) -> int:
    from esmsae.sae.evaluate import evaluate

    for ck in ns.checkpoint:
        card = evaluate(ck, cfg["eval"], store_path=ns.store, model_name=ns.model_name)
        print(json.dumps(summary(card)))
    return 0


def cmd_pipeline(ns: argparse.Namespace, cfg: dict) -> int:
    run_pipeline(cfg, ns.out)
    return 0


def cmd_index(ns: argparse.Namespace, cfg: dict) -> int:
    from esmsae.index.build import build_index

    path = build_index(cfg["index"])
    from esmsae.core.dist import world
    from esmsae.index.reader import FeatureIndex

    if not world().main:  # under torchrun rank 0 wrote the index and reports it
        return 0

    rep = FeatureIndex(path).meta.get("collect") or {}
    if rep.get("duplicate_sequences"):
        print(
            f"note: {rep['duplicate_sequences']} records repeat a sequence already in the set; each unique sequence"
            " is indexed once, under its first id",
            file=sys.stderr,
        )
    from esmsae.app.groups import coverage_note

    fi = FeatureIndex(path)
    for g in fi.groupings():
        note = coverage_note(g, *fi.group_coverage(g))
        if note:
            print(f"note: {note}", file=sys.stderr)
    if rep.get("skipped_invalid"):
        print(f"note: {rep['skipped_invalid']} invalid records skipped (--on-invalid skip)", file=sys.stderr)
    print(f"index: {path}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "match": cmd_match,
    "import": cmd_import,
    "steer": cmd_steer,
    "export": cmd_export,
    "search": cmd_search,
    "probe": cmd_probe,
    "reference-stats": cmd_reference_stats,
    "train-lm": cmd_train_lm,
    "job": cmd_job,
    "demo": cmd_demo,
    "init-model": cmd_init_model,
}
# the commands whose options come from the config dataclasses: they get the resolved sections
CONFIGURED: dict[str, Callable[[argparse.Namespace, dict], int]] = {
    "embed": cmd_embed,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "pipeline": cmd_pipeline,
    "index": cmd_index,
}

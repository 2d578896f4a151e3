"""The external check: choices frozen on the index's valid proteins, scored on a labelled set that played
no part in any choice or fit.

The set: the SignalP benchmark of ProteinBERT's processed TAPE / SignalP data (``labels_proteinbert/
signalP_binary.test.csv``, Brandes et al. 2022; SignalP: Almagro Armenteros et al. 2019): N-terminal
fragments of 40-70 residues, each labelled 1 (carries a signal peptide) or 0. It is a protein-level
label, so every predictor is read at the protein level: a fragment is called positive when the predictor
fires on any of its residues. Frozen predictors, per signal-peptide concept of the index:

* each feature that matches the concept, and the concept's best feature on valid, at its valid-chosen
  threshold (a fraction of the feature's max over the index) and lag;
* the concept's local rule chosen on valid (e.g. "first 20 residues and Kyte-Doolittle mean over 15 >= 1.4");
* the three learned window models, at their valid-chosen thresholds (``window_models`` in the index).

Written to ``external.json`` in the SAE folder (beside ``representation.json``) and shown on the Overview
and in docs/demo.md.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.index.window_model import WINDOW_COLUMNS, WINDOW_NAMES

SIGNALP = "labels_proteinbert/signalP_binary.test.csv"
SET_NAME = "SignalP fragments (ProteinBERT benchmark, test split; protein level)"
CONCEPTS = ("TMbed: signal peptide", "UniProt: signal peptide")
EXTERNAL = "external.json"


def signalp_fragments(shared: Path, n: int = 0, seed: int = 0) -> list[tuple[str, int]]:
    """(sequence, label) of the SignalP test fragments (standard residues only); ``n`` > 0: a seeded sample."""
    from esmsae.core.fasta import STANDARD

    rows = []
    with open(Path(shared) / SIGNALP) as fh:
        for r in csv.DictReader(fh):
            s = r["seq"].strip().upper()
            if s and set(s) <= set(STANDARD):
                rows.append((s, int(r["label"])))
    if n and n < len(rows):
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
        rows = [rows[i] for i in pick]
    return rows


def _prf(pred: np.ndarray, y: np.ndarray) -> dict:
    tp = int((pred & y).sum())
    p, r = tp / max(int(pred.sum()), 1), tp / max(int(y.sum()), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def predictors(idx, concept: str) -> list[dict]:
    """The frozen predictors of one concept: features (matching ones and the best on valid) and baselines."""
    c = idx.q("SELECT * FROM concepts WHERE concept = ?", [concept])
    if c.empty:
        return []
    c = c.iloc[0]
    rows = idx.q(
        """SELECT feature, threshold, lag, beats_baselines, f1 FROM concept_f1 WHERE concept = ?
        AND (beats_baselines OR feature = ?) ORDER BY f1_valid DESC LIMIT 10""",
        [concept, int(c["best_feature"])],
    )
    fmax = idx.q("SELECT feature, max_act FROM features").set_index("feature")["max_act"]
    out = [{"kind": "feature", "name": f"feature {int(r.feature)}" + (" (matches)" if r.beats_baselines else
                                                                      " (best on valid, no match)"),
            "feature": int(r.feature), "cut": float(r.threshold) * float(fmax[int(r.feature)]), "lag": int(r.lag),
            "index_test_f1": float(r.f1)} for r in rows.itertuples()]
    out.append({"kind": "rule", "name": str(c["local_rule"]), "index_test_f1": float(c["local_rule_f1"])})
    for wname, col in WINDOW_COLUMNS.items():
        if f"{col}_threshold" in c.index and np.isfinite(c[f"{col}_threshold"]):
            out.append({"kind": "window", "name": f"learned {wname}", "window": wname,
                        "cut": float(c[f"{col}_threshold"]), "index_test_f1": float(c[f"{col}_f1"])})
    return out


def external_check(index_path, sae_dir=None, shared=None, n: int = 0, plm=None) -> pd.DataFrame:
    """Score the frozen predictors of every signal-peptide concept of an index on the SignalP fragments;
    writes ``external.json`` into the SAE folder and returns the rows."""
    import torch

    from esmsae.core.atomic import write_text_atomic
    from esmsae.core.paths import shared_data
    from esmsae.index.local_rules import RULE_NAMES, fire_matrix
    from esmsae.index.reader import FeatureIndex
    from esmsae.lm.plm import load_plm
    from esmsae.published.load import load_sae
    from esmsae.sae.checkpoint import check_compatible, hook_of, model_config_of

    idx = FeatureIndex(index_path)
    sae_dir = Path(sae_dir or idx.meta.get("sae", ""))
    if not sae_dir.is_absolute() and not sae_dir.exists():
        sae_dir = Path(index_path).parent / sae_dir
    shared = Path(shared) if shared else shared_data()
    frags = signalp_fragments(shared, n)
    y = np.array([lab for _, lab in frags], bool)
    sae = load_sae(sae_dir)
    if plm is None:
        plm = load_plm(model_config_of(sae.meta, ""))
    check_compatible(sae.meta, plm)
    hook = hook_of(sae.meta)
    windows = idx.window_models()
    preds = {c: predictors(idx, c) for c in CONCEPTS}
    seqs = [s for s, _ in frags]
    fired: dict[tuple, list[bool]] = {}
    for i in range(0, len(seqs), 64):
        batch = seqs[i:i + 64]
        acts = plm.embed(batch, [hook])
        for s, a in zip(batch, acts):
            with torch.no_grad():
                codes = sae.encode_dense(a[hook.name].to(next(sae.parameters()).device)).float().cpu().numpy()
            fm = fire_matrix(s)
            for concept, ps in preds.items():
                src = concept.split(":")[0]
                probs = (windows.by_source[src].probs(s) if windows is not None and src in windows.by_source
                         else None)
                for p in ps:
                    if p["kind"] == "feature":
                        col = codes[:, p["feature"]]
                        hit = bool((col > p["cut"]).any())  # the lag shifts which residue a firing stands for,
                        # not whether the fragment holds one: any firing in the fragment calls it positive
                    elif p["kind"] == "rule":
                        hit = bool(fm[:, RULE_NAMES.index(p["name"])].any()) if p["name"] in RULE_NAMES else False
                    else:
                        m = windows.by_source[src] if probs is not None else None
                        hit = bool(m is not None and concept in m.concepts and (
                            probs[:, WINDOW_NAMES.index(p["window"]), m.concepts.index(concept)] > p["cut"]).any())
                    fired.setdefault((concept, p["name"]), []).append(hit)
    rows = []
    for concept, ps in preds.items():
        for p in ps:
            pred = np.array(fired[(concept, p["name"])], bool)
            rows.append({"set": SET_NAME, "concept": concept, "predictor": p["name"], "kind": p["kind"],
                         "index_test_f1": p["index_test_f1"], **_prf(pred, y), "n_fragments": len(y),
                         "n_positive": int(y.sum())})
    df = pd.DataFrame(rows)
    doc = {"set": SET_NAME, "source": SIGNALP, "rows": df.to_dict("records")}
    write_text_atomic(sae_dir / EXTERNAL, json.dumps(doc, indent=2) + "\n")
    idx.con.close()
    return df

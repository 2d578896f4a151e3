"""Protein-level concepts, tested per protein: does a single feature tell a protein's fold class, fold or family?

Fold class and fold are properties of the whole chain that no window of a few residues shows, and family
membership rests on domains a short window does not hold, so they are where a protein LM could know more
than local sequence. Three label sets (``LABEL_SETS``):

- ``scop``: SCOP classes of protein domains (ProteinBERT's ``labels_proteinbert/scop.*.csv``; a all-alpha,
  b all-beta, c alpha/beta, d alpha+beta, e multi-domain, f membrane and cell surface, g small proteins);
- ``fold``: TAPE's remote-homology fold labels (``remote_homology.*.csv``, 1,195 SCOP folds, given as integers
  without names; ``FOLD_NAMES`` names three from shared structures). TAPE's test file holds out whole
  superfamilies of the training folds, so a feature chosen on training superfamilies must carry the fold to
  superfamilies it never saw: the remote-homology setting where sequence-level models fail;
- ``name``: UniProt protein-name families of the 15 proteomes, sides by organism
  (:mod:`esmsae.analysis.name_families`).

Sides: *train* fits the learned baselines only; *valid* makes every choice; *test* reports (SCOP and folds:
train and valid are samples of the benchmark's train file, test its test file). Concepts need >= 20 members
on every side. A feature predicts membership when its maximum over the protein's residues exceeds a
threshold (a fraction of its maximum over the valid proteins). Baselines, scored the same way: fire on every
protein; two learned logistic models, of **composition** (the 20 amino-acid fractions and log length: what
a bag of residues knows) and of **dipeptide composition** (also the 400 adjacent pairs); two learned
**window filters**, a logistic score of the one-hot +-10 and +-20 window maximised over the protein
(:mod:`esmsae.analysis.window_max`: what a window of local sequence knows, pooled as the feature is); each
fitted on train with its L2 weight and threshold chosen on valid; and a family's classic motif where it has
one. A feature
matches when it beats every baseline by 0.05 on valid and test and the 95% bootstrap interval of the F1
difference to each, over test proteins, lies above 0 (:mod:`esmsae.index.bootstrap`).

Written to ``protein_concepts.json`` in the SAE folder; shown on the Overview and in docs/demo.md.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analysis.window_max import L2_GRID as WINDOW_L2
from esmsae.analysis.window_max import WINDOWS
from esmsae.index.window_model import WINDOW_COLUMNS as INDEX_WINDOW_COLUMNS

SCOP = "labels_proteinbert/scop.{}.csv"
CLASSES = {"a": "all-alpha", "b": "all-beta", "c": "alpha/beta", "d": "alpha+beta", "e": "multi-domain",
           "f": "membrane / cell surface", "g": "small proteins"}
# label set -> (file pattern, concept names (None: every label, named by number), default side sizes)
LABEL_SETS = {
    "scop": (SCOP, CLASSES, {"n_train": 3000, "n_valid": 800, "n_test": 800}),
    # valid is larger than SCOP's: folds are rarer than classes (the largest three hold 3-8% of train domains)
    "fold": ("labels_proteinbert/remote_homology.{}.csv", None, {"n_train": 9000, "n_valid": 2500, "n_test": 800}),
    # UniProt protein-name families of the proteomes, sides by organism (esmsae.analysis.name_families; sizes:
    # the other proteins sampled beside every family member)
    "name": ("uniprot/proteomes15", None, {"n_train": 4000, "n_valid": 2000, "n_test": 2000}),
}
MIN_MEMBERS = 20  # per side, as the per-residue concepts
# the learned baselines (name -> dipeptides?): logistic models of what a bag of residues, or of adjacent residue
# pairs, knows about a protein; each fitted on train with its L2 weight and threshold chosen on valid
LEARNED = {"composition": False, "dipeptide composition": True}
L2_GRID = (1e-4, 1e-3, 1e-2)
# TAPE numbers its folds without names. Named here where a chain in ../shared/data/structures is one of the fold's
# domains (>= 85% of the domain's 5-mers in the chain; tests/test_baselines.py checks each):
FOLD_NAMES = {
    "36": ("immunoglobulin-like beta-sandwich", "1igy"),  # an IgG (1igy), the insulin receptor's FnIII (4zxb)
    "73": ("TIM beta/alpha-barrel", "1tim"),  # triose phosphate isomerase (1tim, 8tim), chitinase B1 (2iuz)
    "153": ("ferredoxin-like", "1hwu"),  # PII protein (1hwu), CBP20's RRM (1h2t Z)
}
FRACTIONS = (0.0, 0.15, 0.3, 0.5, 0.7)  # of each feature's max over the valid proteins
PROB_GRID = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
MARGIN = 0.05
OUT = "protein_concepts.json"
# the max-pooled window filters' table columns: the per-residue windows' names (esmsae.index.window_model)
WINDOW_COLUMNS = {name: col for name, col in INDEX_WINDOW_COLUMNS.items() if name in WINDOWS}


def label_sides(shared: Path, label_set: str = "scop", n_train: int | None = None, n_valid: int | None = None,
                n_test: int | None = None, max_len: int = 600, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """(sequence, label) per side: train and valid drawn apart from the set's train file, test from its test
    file (at most ``n_test``; None: the set's default sizes)."""
    from esmsae.core.fasta import STANDARD

    pattern, names, sizes = LABEL_SETS[label_set]
    n_train = sizes["n_train"] if n_train is None else n_train
    n_valid = sizes["n_valid"] if n_valid is None else n_valid
    n_test = sizes["n_test"] if n_test is None else n_test
    if label_set == "name":
        from esmsae.analysis.name_families import name_family_sides

        return name_family_sides(shared, n_train, n_valid, n_test, seed=seed)

    def read(split):
        rows = []
        with open(Path(shared) / pattern.format(split)) as fh:
            for r in csv.DictReader(fh):
                s = r["seq"].strip().upper()
                if s and len(s) <= max_len and set(s) <= set(STANDARD) and (names is None or r["label"] in names):
                    rows.append((s, r["label"]))
        return list(dict(rows).items())  # one row per sequence

    rng = np.random.default_rng(seed)
    tr = read("train")
    te = read("test")
    seen = set()
    te = [r for r in te if not (r[0] in seen or seen.add(r[0]))]
    train_seqs = {s for s, _ in tr}
    te = [r for r in te if r[0] not in train_seqs]  # an identical chain on both sides would be no test
    order = rng.permutation(len(tr))
    return {
        "train": [tr[i] for i in order[:n_train]],
        "valid": [tr[i] for i in order[n_train:n_train + n_valid]],
        "test": [te[i] for i in rng.permutation(len(te))[:n_test]],
    }


def composition(seqs: list[str], dipeptides: bool = False) -> np.ndarray:
    """[P, 21]: the 20 amino-acid fractions and log length; with ``dipeptides`` [P, 421]: also the 400
    fractions of adjacent residue pairs (the bag of local sequence a protein-level model could read)."""
    from esmsae.index.window_model import symbols

    out = np.zeros((len(seqs), 421 if dipeptides else 21), np.float32)
    for i, s in enumerate(seqs):
        sym = symbols(s)
        out[i, :20] = np.bincount(sym[sym < 20], minlength=20) / max(len(s), 1)
        out[i, 20] = np.log(len(s))
        if dipeptides and len(s) > 1:
            a, b = sym[:-1], sym[1:]
            ok = (a < 20) & (b < 20)
            out[i, 21:] = np.bincount(a[ok] * 20 + b[ok], minlength=400) / (len(s) - 1)
    return out


def _f1(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """F1 of predictions [..., P] against labels [P]."""
    tp = (pred & y).sum(-1)
    p = tp / np.maximum(pred.sum(-1), 1)
    r = tp / max(int(y.sum()), 1)
    return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def pooled_max(plm, sae, hook, seqs: list[str], batch: int = 128) -> np.ndarray:
    """[P, F]: each feature's maximum over each protein's residues (``batch`` proteins an embed call, so a
    recurrent LM packs full rows: 32 left most rows short)."""
    import torch

    dev = next(sae.parameters()).device
    out = np.zeros((len(seqs), sae.cfg.n_latents), np.float32)
    for i in range(0, len(seqs), batch):
        for j, a in enumerate(plm.embed(seqs[i:i + batch], [hook])):
            with torch.no_grad():
                out[i + j] = sae.encode_dense(a[hook.name].to(dev)).float().amax(0).cpu().numpy()
    return out


def concept_names(sides: dict, label_set: str = "scop") -> dict[str, str]:
    """label -> concept name for the labels with >= MIN_MEMBERS members on every side."""
    names = LABEL_SETS[label_set][1]
    counts = [pd.Series([c for _, c in v]).value_counts() for v in sides.values()]
    keep = [c for c in counts[0].index if all(cnt.get(c, 0) >= MIN_MEMBERS for cnt in counts)]
    if label_set == "name":
        from esmsae.analysis.name_families import FAMILIES

        return {c: f"UniProt name: {c}" for c in FAMILIES if c in keep}
    if names is not None:
        return {c: f"SCOP class {c} ({names[c]})" for c in names if c in keep}
    return {c: f"TAPE fold {c}" + (f" ({FOLD_NAMES[c][0]})" if c in FOLD_NAMES else "") for c in sorted(keep, key=int)}


def _cut_on_valid(p_valid: np.ndarray, y_valid: np.ndarray) -> tuple[float, float]:
    """(best valid F1, its probability threshold) over ``PROB_GRID``: every learned baseline's threshold."""
    f1v = _f1(p_valid[None, :] >= np.asarray(PROB_GRID)[:, None], y_valid)
    return float(f1v.max()), float(PROB_GRID[int(f1v.argmax())])


def _learned_baseline(X: dict, y: dict) -> dict:
    """A logistic model fitted on train; its L2 weight and probability threshold chosen on valid."""
    from esmsae.analysis.probe import fit_probe

    best = None
    for l2 in L2_GRID:
        fit: dict = {}
        proba = fit_probe(X["train"], y["train"].astype(int), 2, l2=l2, fit=fit)
        f1v, cut = _cut_on_valid(proba(X["valid"])[:, 1], y["valid"])
        if best is None or f1v > best["valid"]:
            best = {"valid": f1v, "cut": cut, "proba": proba, "fit": fit, "l2": l2}
    best["pred_test"] = best["proba"](X["test"])[:, 1] >= best["cut"]
    best["test"] = float(_f1(best["pred_test"], y["test"]))
    return best


def _window_baselines(sides: dict, concepts: list[str], windows, l2_grid, seed: int = 0
                      ) -> dict[str, dict[str, dict]]:
    """window name -> concept -> {valid, test (F1), pred_test [P] bool, l2, cut, fit_loss}: the filters fitted
    on train for every L2 weight, each concept's L2 and probability threshold chosen on valid."""
    from esmsae.analysis.window_max import fit_window_max, train_sample

    lab = {k: np.array([c for _, c in v]) for k, v in sides.items()}
    sel = train_sample(lab["train"], concepts, np.random.default_rng(seed))
    seqs_tr = [sides["train"][i][0] for i in sel]
    y_tr = np.stack([lab["train"][sel] == c for c in concepts], 1)
    out: dict[str, dict[str, dict]] = {}
    for name in windows:
        best: dict[str, dict] = {}
        for l2 in l2_grid:
            m = fit_window_max(seqs_tr, y_tr, WINDOWS[name], l2, seed=seed)
            p = {s: m.proba([q for q, _ in sides[s]]) for s in ("valid", "test")}
            for j, c in enumerate(concepts):
                f1v, cut = _cut_on_valid(p["valid"][:, j], lab["valid"] == c)
                if c not in best or f1v > best[c]["valid"]:
                    pred = p["test"][:, j] >= cut
                    best[c] = {"valid": f1v, "test": float(_f1(pred, lab["test"] == c)),
                               "pred_test": pred, "l2": l2, "cut": cut, "fit_loss": m.fit_loss}
        out[name] = best
    return out


def protein_concept_table(sides: dict, codes: dict[str, np.ndarray], label_set: str = "scop",
                          windows=tuple(WINDOWS), window_l2=WINDOW_L2) -> pd.DataFrame:
    """One row per concept: the best feature on valid, its test F1 and bootstrap interval against every baseline
    (fire-everywhere, the composition and dipeptide-composition models, the max-pooled window filters of
    ``windows`` fitted with each L2 of ``window_l2``, the motif), and whether it matches.
    ``codes``: side -> [P, F] pooled maxima (valid, test)."""
    from esmsae.analysis.name_families import motif_predictions
    from esmsae.index.bootstrap import intervals

    seqs = {k: [s for s, _ in v] for k, v in sides.items()}
    lab = {k: np.array([c for _, c in v]) for k, v in sides.items()}
    X = {name: {k: composition(v, dipeptides=di) for k, v in seqs.items()} for name, di in LEARNED.items()}
    fmax = np.maximum(codes["valid"].max(0), 1e-9)
    names = concept_names(sides, label_set)
    win = _window_baselines(sides, list(names), windows, window_l2) if names else {}
    rows = []
    for k, name in names.items():
        y = {s: lab[s] == k for s in lab}
        learned = {b: _learned_baseline(X[b], y) for b in LEARNED}
        learned.update({w: win[w][k] for w in win})
        triv = {s: float(_f1(np.ones_like(y[s]), y[s])) for s in ("valid", "test")}
        motif = {s: motif_predictions(seqs[s], k) if label_set == "name" else None for s in ("valid", "test")}
        motif_f1 = {s: float(_f1(m, y[s])) for s, m in motif.items() if m is not None}
        best_base = {s: max([triv[s]] + [m[s] for m in learned.values()] + [motif_f1.get(s, 0.0)])
                     for s in ("valid", "test")}
        # features: [T, P, F] predictions at each fraction of the feature's valid max
        fr = np.asarray(FRACTIONS)[:, None, None]
        fv = _f1(np.moveaxis(codes["valid"][None] > fr * fmax, 1, -1), y["valid"])  # [T, F]
        t_F = fv.argmax(0)
        f1v_F = fv.max(0)
        best = int(np.argmax(f1v_F))
        pred_t = codes["test"][:, best] > FRACTIONS[t_F[best]] * fmax[best]
        f1t = float(_f1(pred_t, y["test"]))
        base_pred = [np.ones_like(y["test"])] + [m["pred_test"] for m in learned.values()]
        if motif["test"] is not None:
            base_pred.append(motif["test"])
        cnt = np.stack([np.stack([(p & y["test"]), p, np.zeros_like(p)], 1) for p in base_pred + [pred_t]], 1)
        lo, hi = intervals(cnt.astype(np.int64), y["test"].astype(np.int64), np.zeros(len(y["test"])),
                           len(base_pred), False)
        worst = int(lo[0].argmin())
        ok = (f1v_F[best] >= best_base["valid"] + MARGIN and f1t >= best_base["test"] + MARGIN
              and float(lo[0, worst]) > 0)
        comp, di = learned["composition"], learned["dipeptide composition"]
        wcols = {}
        for w, col in WINDOW_COLUMNS.items():
            b = learned.get(w)
            wcols.update({f"{col}_f1_valid": b and b["valid"], f"{col}_f1": b and b["test"],
                          f"{col}_fit_loss": b and b["fit_loss"], f"{col}_l2": b and b["l2"]})
        rows.append({
            "concept": name, "labels": label_set, "best_feature": best, "threshold_fraction": FRACTIONS[t_F[best]],
            "f1_valid": float(f1v_F[best]), "f1": f1t, "composition_f1_valid": comp["valid"],
            "composition_f1": comp["test"], "composition_fit_loss": comp["fit"].get("fit_loss"),
            "dipeptide_f1_valid": di["valid"], "dipeptide_f1": di["test"],
            "dipeptide_fit_loss": di["fit"].get("fit_loss"), "dipeptide_l2": di["l2"], "trivial_f1": triv["test"],
            **wcols, "motif_f1_valid": motif_f1.get("valid"), "motif_f1": motif_f1.get("test"),
            "ci_lo": float(lo[0, worst]), "ci_hi": float(hi[0, worst]), "match": bool(ok),
            "n_train": int(y["train"].sum()), "n_valid": int(y["valid"].sum()), "n_test": int(y["test"].sum()),
            "n_test_proteins": len(y["test"]),
        })
    return pd.DataFrame(rows)


def protein_concepts(sae_dir, shared=None, plm=None, seed: int = 0, label_sets=tuple(LABEL_SETS), **sizes
                     ) -> pd.DataFrame:
    """Run the per-protein concept tests for a checkpoint; writes ``protein_concepts.json`` in its folder,
    keeping the rows already there of label sets not in ``label_sets`` (one set can be re-run alone).
    ``sizes`` (n_train, n_valid, n_test) override every label set's defaults (smoke runs)."""
    from esmsae.core.paths import shared_data
    from esmsae.lm.plm import load_plm
    from esmsae.published.load import load_sae
    from esmsae.sae.checkpoint import check_compatible, hook_of, model_config_of

    shared = Path(shared) if shared else shared_data()
    sae = load_sae(Path(sae_dir))
    if plm is None:
        plm = load_plm(model_config_of(sae.meta, ""))
    check_compatible(sae.meta, plm)
    tables = []
    for label_set in label_sets:
        sides = label_sides(shared, label_set, seed=seed, **sizes)
        codes = {s: pooled_max(plm, sae, hook_of(sae.meta), [q for q, _ in sides[s]]) for s in ("valid", "test")}
        tables.append(protein_concept_table(sides, codes, label_set))
    old = Path(sae_dir) / OUT
    if old.exists():
        kept = [r for r in json.loads(old.read_text())["rows"] if r["labels"] not in label_sets]
        tables.insert(0, pd.DataFrame(kept))
    order = {k: i for i, k in enumerate(LABEL_SETS)}
    tables = [t for t in tables if len(t)]
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["labels"])
    df = df.sort_values("labels", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    write_protein_concepts(sae_dir, df)
    return df


def write_protein_concepts(sae_dir, df: pd.DataFrame) -> Path:
    from esmsae.core.atomic import write_text_atomic

    doc = {"labels": {"scop": "SCOP classes (ProteinBERT's SCOPe benchmark): train / valid from scop.train, test"
                              " from scop.test",
                      "fold": "TAPE remote-homology folds (ProteinBERT's copy): train / valid from"
                              " remote_homology.train, test from remote_homology.test (superfamilies held out)",
                      "name": "UniProt protein-name families of the 15 proteomes, sides by organism"
                              " (esmsae.analysis.name_families)"},
           "baselines": "fire on every protein; logistic models of amino-acid composition + log length and of"
                        " dipeptide composition, and max-pooled one-hot window filters (+-10, +-20), fitted on"
                        " train, L2 weight and threshold chosen on valid; for name families with a classic motif,"
                        " the motif anywhere in the protein",
           "rows": df.to_dict("records")}
    return write_text_atomic(Path(sae_dir) / OUT, json.dumps(doc, indent=2) + "\n")

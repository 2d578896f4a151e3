"""The representation card: does this model know more than local sequence?

Per-residue linear probes for two structural properties, trained on one set of proteins and scored on
another (a protein-level split, so no protein is on both sides):

* **TM helix** (TMbed, Bernhofer & Rost 2022): train on homology partitions cv_00..cv_03, test on
  cv_04 (TMbed's own partitions keep homologues on one side); F1 of the TM-helix class, the
  decision threshold chosen on the training residues;
* **secondary structure, 3 states** (FLIP, from PDB chains): split by a hash of the sequence; Q3.

Each probe reads one representation of the residue: the LM layer, the SAE codes, and one-hot
windows of the sequence itself (+-3 and +-10 residues), which are the controls: a representation
earns "knows more than local sequence" only where it beats the +-10 window. For a causal LM
(UniRep) the state at t has seen residues 1..t only, so the card adds the states at t and t+10
together (what the model knows once it has read ten residues past t).

The probe is logistic regression (standardised inputs, L2), fitted to convergence with full-batch
L-BFGS on at most ``max_train_residues`` residues (its final loss and gradient are recorded); the same
recipe for every representation. On the SAE codes the card adds k-sparse probes (k = 1, 4, 16
features chosen on the training residues): how much of what the LM state knows a few single features
carry. TMbed tasks: TM helix, signal peptide, and inside / outside within membrane proteins.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from esmsae.core.fasta import STANDARD
from esmsae.index.labels import load_flip

_AA = np.full(256, 20, np.int64)
for _i, _a in enumerate(STANDARD):
    _AA[ord(_a)] = _i


@dataclass
class ProbeTask:
    name: str
    metric: str  # "F1 (TM helix)" or "Q3"
    n_classes: int
    train: list[tuple[str, np.ndarray]]  # (sequence, labels per residue; -1 = unknown)
    test: list[tuple[str, np.ndarray]]


def _sample(rows: list, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [rows[i] for i in sorted(rng.choice(len(rows), min(n, len(rows)), replace=False))]


TMBED_TASKS = {  # name -> (residue codes of the positive class, membrane proteins only)
    "TM helix (TMbed)": ("Hh", False),
    "TMbed inside (membrane proteins)": ("1", True),
    "TMbed outside (membrane proteins)": ("2", True),
    "signal peptide (TMbed)": ("S", False),
}


def tmbed_task(shared: Path, name: str = "TM helix (TMbed)", n_train: int = 500, n_test: int = 250,
               max_len: int = 1000, seed: int = 0) -> ProbeTask:
    """TMbed: residue label 1 for the task's codes, 0 for every other resolved residue, -1 for U.
    Topology tasks keep membrane proteins only (a globular protein is all "1" by default)."""
    codes, membrane_only = TMBED_TASKS[name]
    parts: dict[int, list] = {}
    for f in sorted((shared / "tmbed").glob("cv_0*_a.fasta")):
        part = int(f.name.split("_")[1])
        lines = [ln.strip() for ln in open(f) if ln.strip()]
        for i in range(0, len(lines) - 2, 3):
            seq, lab = lines[i + 1], lines[i + 2]
            if len(seq) != len(lab) or len(seq) > max_len or not set(seq) <= set(STANDARD + "XBZUO"):
                continue
            if membrane_only and not any(c in lab for c in "HhBb"):
                continue
            arr = np.frombuffer(lab.encode(), "S1")
            y = np.where(np.isin(arr, [c.encode() for c in codes]), 1, 0)
            y[arr == b"U"] = -1
            parts.setdefault(part, []).append((seq, y))
    test_part = max(parts)
    train = [r for p, rows in parts.items() if p != test_part for r in rows]
    return ProbeTask(name, f"F1 ({name.split(' (')[0]})", 2, _sample(train, n_train, seed),
                     _sample(parts[test_part], n_test, seed + 1))


def tm_helix_task(shared: Path, n_train: int = 500, n_test: int = 250, max_len: int = 1000, seed: int = 0) -> ProbeTask:
    """TMbed: residue label 1 for H/h (TM helix), 0 for every other resolved residue, -1 for U."""
    return tmbed_task(shared, "TM helix (TMbed)", n_train, n_test, max_len, seed)


def secondary_structure_task(
    shared: Path, n_train: int = 500, n_test: int = 250, max_len: int = 1000, seed: int = 0
) -> ProbeTask:
    """FLIP 3-state secondary structure (H 0, E 1, C 2; unresolved -1), split by a hash of the sequence."""
    rows = {0: [], 1: []}
    for lab in load_flip(shared / "labels_flip"):
        if lab.source != "FLIP SS" or len(lab.sequence) > max_len:
            continue
        y = np.full(len(lab.sequence), -1)
        for cname, k in (("FLIP SS: helix", 0), ("FLIP SS: strand", 1), ("FLIP SS: coil", 2)):
            for a, b in lab.spans.get(cname, []):
                y[a:b] = k
        half = int(hashlib.md5(b"probe-split:" + lab.sequence.encode()).hexdigest()[:8], 16) & 1
        rows[half].append((lab.sequence, y))
    return ProbeTask(
        "secondary structure (FLIP, 3 states)",
        "Q3",
        3,
        _sample(rows[0], n_train, seed),
        _sample(rows[1], n_test, seed + 1),
    )


def onehot_window(seq: str, w: int) -> np.ndarray:
    """[L, (2w+1) x 21]: the residue types at offsets -w..w (21st type: X or past an end)."""
    a = _AA[np.frombuffer(seq.encode("ascii"), np.uint8)]
    L = len(a)
    padded = np.r_[np.full(w, 20), a, np.full(w, 20)]
    out = np.zeros((L, 2 * w + 1, 21), np.float32)
    for k in range(2 * w + 1):
        out[np.arange(L), k, padded[k:k + L]] = 1.0
    return out.reshape(L, -1)


def left_window(seq: str, w: int) -> np.ndarray:
    """[L, (w+1) x 21]: the residue types at offsets -w..0 (all a left-to-right LM has read at t)."""
    return onehot_window(seq, w).reshape(len(seq), 2 * w + 1, 21)[:, : w + 1].reshape(len(seq), -1)


SPARSE_K = (0, 1, 4, 16)  # SAE codes: the full probe, then k-sparse probes


def shifted_pair(h_LD: np.ndarray, shift: int = 10) -> np.ndarray:
    """[L, 2D]: the state at t and at t+shift (zeros past the end) side by side."""
    later = np.zeros_like(h_LD)
    later[: max(len(h_LD) - shift, 0)] = h_LD[shift:]
    return np.concatenate([h_LD, later], 1)


def _stack(task_rows, featurize: Callable[[list[str]], list[np.ndarray]], max_res: int, seed: int):
    X = featurize([s for s, _ in task_rows])
    ys = [y for _, y in task_rows]
    Xc = np.concatenate([x[y >= 0] for x, y in zip(X, ys)])
    yc = np.concatenate([y[y >= 0] for y in ys])
    if len(yc) > max_res:
        keep = np.sort(np.random.default_rng(seed).choice(len(yc), max_res, replace=False))
        Xc, yc = Xc[keep], yc[keep]
    return Xc.astype(np.float32), yc


def fit_probe(X: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-4, seed: int = 0, max_iter: int = 500,
              fit: dict | None = None):
    """Logistic regression on standardised inputs, fitted to convergence by full-batch L-BFGS (strong
    Wolfe line search). The earlier 300 Adam epochs left the SAE codes' probe under-fitted (an audit
    found 0.70 converged against the card's lower figure). ``fit`` receives the final loss, the gradient
    norm and the iterations, so the card shows the fit. Returns a predict-proba function."""
    torch.manual_seed(seed)
    Xt = torch.from_numpy(X)
    mu, sd = Xt.mean(0), Xt.std(0).clamp(min=1e-6)
    Z = (Xt - mu) / sd
    yt = torch.from_numpy(y).long()
    W = torch.zeros(X.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W + b, yt) + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        loss = closure()  # also leaves the final gradient in .grad
    if fit is not None:
        grad = torch.cat([W.grad.flatten(), b.grad.flatten()])
        state = opt.state[opt._params[0]]
        fit.update({"fit_loss": float(loss.detach()), "fit_grad_max": float(grad.abs().max()),
                    "fit_iterations": int(state.get("n_iter", 0))})
    W, b = W.detach(), b.detach()

    def proba(Xn: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(((torch.from_numpy(Xn) - mu) / sd) @ W + b, -1).numpy()
    return proba


def top_k_columns(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The k columns whose class means differ most in units of their spread (binary tasks; for more
    classes the largest spread of class means): the selection step of sparse probing (Gurnee et al. 2023,
    "Finding Neurons in a Haystack"), made on the training residues only."""
    sd = X.std(0) + 1e-6
    means = np.stack([X[y == c].mean(0) if (y == c).any() else np.zeros(X.shape[1]) for c in np.unique(y)])
    score = (means.max(0) - means.min(0)) / sd
    return np.argsort(-score, kind="stable")[:k]


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(((pred == 1) & (y == 1)).sum())
    p, r = tp / max((pred == 1).sum(), 1), tp / max((y == 1).sum(), 1)
    return 2 * p * r / (p + r) if p + r else 0.0


def score_probe(task: ProbeTask, featurize, max_train_residues: int = 60_000, seed: int = 0, k: int = 0) -> dict:
    """The probe's test metric; ``k`` > 0: a k-sparse probe (the k best columns on train, then the same fit)."""
    Xtr, ytr = _stack(task.train, featurize, max_train_residues, seed)
    Xte, yte = _stack(task.test, featurize, 10 ** 9, seed)
    cols = None
    if k:
        cols = top_k_columns(Xtr, ytr, k)
        Xtr, Xte = np.ascontiguousarray(Xtr[:, cols]), np.ascontiguousarray(Xte[:, cols])
    fit: dict = {}
    proba = fit_probe(Xtr, ytr, task.n_classes, seed=seed, fit=fit)
    if task.n_classes == 2:
        ptr = proba(Xtr)[:, 1]
        grid = np.linspace(0.05, 0.95, 19)
        thr = grid[int(np.argmax([_f1(ytr, (ptr >= t).astype(int)) for t in grid]))]  # chosen on training residues
        value = _f1(yte, (proba(Xte)[:, 1] >= thr).astype(int))
    else:
        value = float((proba(Xte).argmax(1) == yte).mean())
    return {
        "value": value,
        "n_train_residues": int(len(ytr)),
        "n_test_residues": int(len(yte)),
        "dims": int(Xtr.shape[1]),
        **fit,
        **({"columns": [int(c) for c in cols]} if cols is not None else {}),
    }


def representation_card(
    representations: dict[str, Callable[[list[str]], list[np.ndarray]]],
    shared: Path,
    n_train: int = 500,
    n_test: int = 250,
    seed: int = 0,
    tasks: Sequence[ProbeTask] | None = None,
) -> pd.DataFrame:
    """One row per (task, representation): the probe's test metric. ``representations`` maps a name to
    a function from sequences to per-residue feature matrices; the one-hot windows are added here."""
    tasks = tasks or [
        *(tmbed_task(shared, name, n_train, n_test, seed=seed) for name in TMBED_TASKS),
        secondary_structure_task(shared, n_train, n_test, seed=seed),
    ]
    reps = {"one-hot window +-3 (control)": lambda seqs: [onehot_window(s, 3) for s in seqs],
            "one-hot window +-10 (control)": lambda seqs: [onehot_window(s, 10) for s in seqs],
            "one-hot window +-20 (control)": lambda seqs: [onehot_window(s, 20) for s in seqs],
            "one-hot left window 20 (control)": lambda seqs: [left_window(s, 20) for s in seqs], **representations}
    rows = []
    for task in tasks:
        for name, fn in reps.items():
            ks = SPARSE_K if name.startswith("SAE codes") and task.n_classes == 2 else (0,)
            for k in ks:
                r = score_probe(task, fn, seed=seed, k=k)
                plural = "s" if k > 1 else ""
                label = name if not k else f"{name.split(' (')[0]}: best {k} feature{plural} (sparse probe)"
                rows.append({"task": task.name, "metric": task.metric, "representation": label, "k": k, **r,
                             "n_train_proteins": len(task.train), "n_test_proteins": len(task.test)})
    df = pd.DataFrame(rows)
    ctl = df[df.representation == "one-hot window +-10 (control)"].set_index("task")["value"]
    df["minus_window10"] = df["value"] - df["task"].map(ctl)
    ctl20 = df[df.representation == "one-hot window +-20 (control)"].set_index("task")["value"]
    df["minus_window20"] = df["value"] - df["task"].map(ctl20)
    return df


def model_representations(plm, hook, sae=None) -> dict[str, Callable]:
    """The LM layer (and, for a causal LM, the states at t and t+10) and the SAE codes, as featurizers."""
    cache: dict[str, np.ndarray] = {}

    def layer(seqs):
        todo = [s for s in dict.fromkeys(seqs) if s not in cache]
        if todo:
            for s, d in zip(todo, plm.embed(todo, [hook])):
                cache[s] = d[hook.name].numpy()
        return [cache[s] for s in seqs]

    out: dict[str, Callable] = {f"LM layer {hook.layer} ({plm.name})": layer}
    if getattr(plm, "objective", "mlm") == "causal":
        out[f"LM layer {hook.layer}, states t and t+10"] = lambda seqs: [shifted_pair(h) for h in layer(seqs)]
    if sae is not None:
        def codes(seqs):
            with torch.no_grad():
                return [
                    sae.encode_dense(torch.from_numpy(h).to(next(sae.parameters()).device)).float().cpu().numpy()
                    for h in layer(seqs)
                ]
        out[f"SAE codes ({sae.cfg.n_latents} latents)"] = codes
    return out


REPRESENTATION = "representation.json"


def probe_checkpoint(
    sae_dir, shared=None, n_train: int = 500, n_test: int = 250, seed: int = 0, plm=None
) -> pd.DataFrame:
    """The representation card of a checkpoint's model layer and SAE codes, written to
    ``representation.json`` in the checkpoint folder (atomically) and returned."""
    import json

    from esmsae.core.atomic import write_text_atomic
    from esmsae.core.paths import shared_data
    from esmsae.lm.plm import load_plm
    from esmsae.published.load import load_sae
    from esmsae.sae.checkpoint import check_compatible, hook_of, model_config_of

    sae = load_sae(Path(sae_dir))
    meta = sae.meta
    if plm is None:
        plm = load_plm(model_config_of(meta, ""))
    check_compatible(meta, plm)
    shared = Path(shared) if shared else shared_data()
    df = representation_card(model_representations(plm, hook_of(meta), sae), shared, n_train, n_test, seed)
    write_text_atomic(Path(sae_dir) / REPRESENTATION, json.dumps({
        "model": plm.name, "hook": hook_of(meta).name, "objective": getattr(plm, "objective", "mlm"),
        "probe": "logistic regression on standardised inputs, threshold (F1) chosen on training residues",
        "rows": df.to_dict("records")}, indent=2) + "\n")
    return df

"""Run protein LM + SAE on a user's sequence (the app's sequence inspector)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import hook_of, load_sae, model_config_of
from .fasta import SequenceError, parse_fasta_text
from .plm import load_plm

MAX_PASTE = 200_000  # characters; a bigger paste gets a message, not a hang
MAX_SEQUENCES = 50


class InputError(ValueError):
    """The pasted text cannot be analysed; the message says why."""


def parse_input(text: str) -> list[tuple[str, str]]:
    """A pasted sequence or FASTA -> [(name, sequence)], with clear errors."""
    if text is None or not text.strip():
        raise InputError("Paste a protein sequence or FASTA first (the box is empty).")
    if len(text) > MAX_PASTE:
        raise InputError(f"The paste is {len(text):,} characters; the inspector takes at most {MAX_PASTE:,} "
                         f"(index large sets with `python -m esmsae index`).")
    body = text.strip()
    if not body.startswith(">"):
        body = ">query\n" + body
    try:
        prots = parse_fasta_text(body)
    except SequenceError as e:
        raise InputError(str(e)) from e
    if not prots:
        raise InputError("No sequence found in the paste.")
    if len(prots) > MAX_SEQUENCES:
        raise InputError(f"{len(prots)} sequences pasted; the inspector takes at most {MAX_SEQUENCES} at a time.")
    # names must be unique to be picked: a repeated id gets its record number ("x (record 2)")
    seen: dict[str, int] = {}
    out = []
    for i, p in enumerate(prots, 1):
        name = p.id if p.id not in seen else f"{p.id} (record {i})"
        seen[p.id] = i
        out.append((name, p.sequence))
    return out


@dataclass
class Result:
    name: str
    sequence: str
    acts_LK: np.ndarray  # activations of the active latents per residue
    idx_LK: np.ndarray  # their latent ids
    seconds: float

    def dense(self, features: list[int]) -> np.ndarray:
        """[L, len(features)] activations of the chosen features."""
        out = np.zeros((len(self.sequence), len(features)), np.float32)
        feats = np.asarray(features, dtype=np.int64)
        order = np.argsort(feats)
        pos = (
            np.searchsorted(feats[order], self.idx_LK).clip(max=len(feats) - 1)
            if len(feats)
            else np.zeros_like(self.idx_LK)
        )
        hit = (
            (self.acts_LK > 0) & (feats[order][pos] == self.idx_LK) if len(feats) else np.zeros(self.idx_LK.shape, bool)
        )
        rows, _ = np.nonzero(hit)
        out[rows, order[pos[hit]]] = self.acts_LK[hit]
        return out

    def top_features(self, n: int = 20) -> pd.DataFrame:
        on = self.acts_LK > 0
        f = self.idx_LK[on]
        v = self.acts_LK[on]
        pos = np.nonzero(on)[0]
        if len(f) == 0:
            return pd.DataFrame(columns=["feature", "max_act", "mean_act", "n_residues", "max_pos"])
        df = pd.DataFrame({"feature": f, "v": v, "pos": pos})
        g = df.groupby("feature")
        out = pd.DataFrame(
            {
                "max_act": g["v"].max(),
                "mean_act": g["v"].mean(),
                "n_residues": g.size(),
                "max_pos": g.apply(lambda d: int(d.loc[d["v"].idxmax(), "pos"]) + 1, include_groups=False),
            }
        ).reset_index()
        return out.sort_values("max_act", ascending=False).head(n).reset_index(drop=True)

    def track(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        col = self.dense([f])[:, 0]
        pos = np.flatnonzero(col > 0)
        return pos, col[pos]

    def to_csv(self, features: list[int] | None = None) -> str:
        feats = features if features is not None else sorted(set(self.idx_LK[self.acts_LK > 0].tolist()))
        m = self.dense(feats)
        df = pd.DataFrame(m, columns=[f"f{f}" for f in feats])
        df.insert(0, "residue", list(self.sequence))
        df.insert(0, "position", np.arange(1, len(self.sequence) + 1))
        return df.to_csv(index=False)


class Analyzer:
    """Protein LM + SAE of a checkpoint, loaded once (the app caches it with st.cache_resource)."""

    def __init__(self, sae_dir: str | Path, device: str = "auto"):
        self.sae = load_sae(sae_dir)
        self.meta = self.sae.meta
        mcfg = model_config_of(self.meta)
        mcfg.device = device
        self.plm = load_plm(mcfg)
        self.sae = self.sae.to(self.plm.device)  # one device for both
        self.sae.meta = self.meta  # what steering reads (hook, base model)
        self.hook = hook_of(self.meta)

    @torch.no_grad()
    def run(self, name: str, sequence: str) -> Result:
        t = time.perf_counter()
        x_LD = self.plm.embed([sequence], [self.hook])[0][self.hook.name]
        lat = self.sae.encode(x_LD.to(self.plm.device))
        return Result(
            name, sequence, lat.acts_BK.float().cpu().numpy(), lat.idx_BK.cpu().numpy(), time.perf_counter() - t
        )


def steer_in_app(analyzer: "Analyzer", sequence: str, edit):
    """Steering (``esmsae.steer``) with the inspector's loaded model and SAE."""
    from .model import Model
    from .steer import steer

    return steer(Model(analyzer.plm), analyzer.sae, sequence, edit)


def generate_in_app(analyzer: "Analyzer", sequence: str, edit, n_designs: int, rounds: int, mask_frac: float,
                    temperature: float, seed: int, pppl: bool):
    """Generation with the edit held (``esmsae.steer.generate``) with the inspector's model and SAE."""
    from .model import Model
    from .steer import generate

    return generate(
        Model(analyzer.plm),
        analyzer.sae,
        sequence,
        edit,
        n_designs=n_designs,
        rounds=rounds,
        mask_frac=mask_frac,
        temperature=temperature,
        seed=seed,
        pppl=pppl,
    )


MAX_GROUP_PROTEINS = 500


def read_uploaded_grouping(name: str, data: bytes, lookup) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """An uploaded grouping file -> ({group: [(id, sequence)]}, number of unknown ids).

    TSV ``id<TAB>group`` (ids looked up with ``lookup(ids) -> {id: sequence}``, e.g. the index's
    proteins) or JSON ``{group: [[sequence, header], ...]}`` (esm-sae's sampled_sequences.json).
    """
    text = data.decode("utf-8", errors="replace")
    groups: dict[str, list[tuple[str, str]]] = {}
    unknown = 0
    from .index.proteins import grouping_json, grouping_tsv

    try:
        if name.lower().endswith(".json"):
            for g, header, seq in grouping_json(text, name):
                groups.setdefault(g, []).append((header, seq))
        else:
            pairs = grouping_tsv(text, name)
            seqs = lookup([p for p, _ in pairs])
            for pid, g in pairs:
                if pid in seqs:
                    groups.setdefault(g, []).append((pid, seqs[pid]))
                else:
                    unknown += 1
            if pairs and unknown == len(pairs):
                raise InputError(
                    f"{name}: none of its {len(pairs)} protein ids is in this index (first: {pairs[0][0]!r})"
                )
    except InputError:
        raise
    except ValueError as e:  # IndexError_ and SequenceError name the line, group or entry
        raise InputError(str(e)) from e
    if not groups:
        raise InputError(f"{name}: no groups found")
    n = sum(len(v) for v in groups.values())
    if n > MAX_GROUP_PROTEINS:
        raise InputError(f"{name}: {n} proteins; the app computes uploaded groupings for at most {MAX_GROUP_PROTEINS} "
                         f"(pass it to `python -m esmsae index --groups` for more)")
    return groups, unknown


def group_usage(analyzer: "Analyzer", groups: dict[str, list[tuple[str, str]]], test: str = "cmh", length_bins: int = 5,
                min_group_size: int = 5) -> pd.DataFrame:
    """Per group x feature: proteins where it fires, fraction, mean per-protein max, and
    enrichment against the other groups as in the index (length-stratified CMH by default, BH q)."""
    from .index.group_stats import length_bin, length_edges, usage_frame

    names = sorted(groups)
    F = analyzer.sae.cfg.n_latents
    edges = length_edges(np.array([len(s) for g in names for _, s in groups[g]]), length_bins)
    B = len(edges) + 1
    fire = np.zeros((len(names), B, F), np.int64)
    n_prot = np.zeros((len(names), B), np.int64)
    summax = np.zeros((len(names), F))
    for gi, g in enumerate(names):
        seqs = [s for _, s in groups[g]]
        with torch.no_grad():
            for s, x_LD in zip(seqs, (a[analyzer.hook.name] for a in analyzer.plm.embed(seqs, [analyzer.hook]))):
                lat = analyzer.sae.encode(x_LD.to(analyzer.plm.device))
                dense = np.zeros(F)
                np.maximum.at(dense, lat.idx_BK.cpu().numpy().ravel(), lat.acts_BK.float().cpu().numpy().ravel())
                b = length_bin(len(s), edges)
                fire[gi, b] += dense > 0
                n_prot[gi, b] += 1
                summax[gi] += dense
    df, _ = usage_frame(names, fire, summax, n_prot, test, min_group_size)
    return df[df.n_fire > 0].reset_index(drop=True)

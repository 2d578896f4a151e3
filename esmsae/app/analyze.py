"""Run protein LM + SAE on a user's sequence (the app's sequence inspector)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.core.fasta import SequenceError, parse_fasta_text
from esmsae.lm.plm import load_plm
from esmsae.published.load import load_sae
from esmsae.sae.checkpoint import hook_of, model_config_of

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
    """Steering (``esmsae.analysis.steer``) with the inspector's loaded model and SAE."""
    from esmsae.analysis.model import Model
    from esmsae.analysis.steer import steer

    return steer(Model(analyzer.plm), analyzer.sae, sequence, edit)


def generate_in_app(analyzer: "Analyzer", sequence: str, edit, n_designs: int, rounds: int, mask_frac: float,
                    temperature: float, seed: int, pppl: bool):
    """Generation with the edit held (``esmsae.analysis.steer.generate``) with the inspector's model and SAE."""
    from esmsae.analysis.model import Model
    from esmsae.analysis.steer import generate

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

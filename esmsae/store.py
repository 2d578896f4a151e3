"""Sharded activation store: FASTA -> protein LM -> fp16 activation shards on disk.

Layout of a store folder::

    manifest.json            model, hooks, d_in, data provenance, finished shards
    shard_00000/
        L3_resid.npy         float16 [T, D] per hook (memory-mappable)
        protein.npy          int32 [T]  global protein index of each token
        position.npy         int32 [T]  0-based residue position in that protein
        heldout.npy          bool  [T]  token belongs to a held-out protein
        proteins.parquet     one row per protein of the shard (id, sequence, organism, taxid, split...)

Writing streams: memory is bounded by one shard whatever the dataset size. A shard
is written to ``shard_xxxxx.tmp`` and renamed when complete, and only then entered
in the manifest (itself replaced atomically), so an interrupted run loses at most
the shard in progress and the same command resumes after the last finished shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import EmbedConfig, HookConfig, ModelConfig, save_json
from .fasta import Protein, read_proteins
from .plm import Hook, ProteinLM, load_plm

MANIFEST = "manifest.json"
STORE_VERSION = 1


class StoreError(ValueError):
    pass


def is_heldout(sequence: str, fraction: float) -> bool:
    """Deterministic split by sequence hash: identical sequences always land on the same side."""
    if fraction <= 0:
        return False
    h = int(hashlib.md5(sequence.encode()).hexdigest()[:8], 16)
    return h / 16**8 < fraction


def _file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size}


def embed_fasta(embed: EmbedConfig, model: ModelConfig, hooks: HookConfig, plm: ProteinLM | None = None, progress: bool = True) -> Path:
    """Stream ``embed.fasta`` through the model into ``embed.store`` (resumable)."""
    if not embed.fasta:
        raise StoreError("EmbedConfig.fasta: no input FASTA given")
    if not embed.store:
        raise StoreError("EmbedConfig.store: no output folder given")
    out = Path(embed.store)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob("*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()

    plm = plm or load_plm(model)
    hook_objs = [Hook(layer, hooks.site) for layer in hooks.layers]
    for h in hook_objs:
        plm.check_hook(h)
    names = [h.name for h in hook_objs]
    provenance = {"fasta": _file_fingerprint(embed.fasta)}
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        man = json.loads(manifest_path.read_text())
        _check_resume(man, embed, model, hooks, provenance)
    else:
        man = {
            "version": STORE_VERSION,
            "model": asdict(model),
            "model_info": plm.describe(),
            "hooks": asdict(hooks),
            "hook_names": names,
            "d_in": plm.d_model,
            "bos_eos": "stripped",
            "embed": asdict(embed),
            "provenance": provenance,
            "shards": [],
            "n_proteins": 0,
            "n_tokens": 0,
            "n_skipped": 0,
            "skipped_examples": [],
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_json(man, manifest_path)
    if man["complete"]:
        return out

    skipped: list[tuple[str, str]] = []
    stream = read_proteins(embed.fasta, on_invalid=embed.on_invalid, skipped=skipped)
    done = man["n_proteins"]
    for _ in range(done):  # resume: skip proteins already in finished shards
        if next(stream, None) is None:
            break
    limit = embed.max_proteins or None
    bar = tqdm(total=limit, initial=done, unit="prot", desc="embed", disable=not progress)
    pidx = done
    pending: list[Protein] = []
    pending_tokens = 0

    def flush() -> None:
        nonlocal pending, pending_tokens
        if pending:
            _write_shard(out, len(man["shards"]), pending, pidx - len(pending), plm, hook_objs, embed, man)
            man["n_skipped"] += len(skipped)
            man["skipped_examples"] = (man["skipped_examples"] + [f"{a}: {b}" for a, b in skipped])[:20]
            skipped.clear()
            save_json(man, manifest_path)
        pending, pending_tokens = [], 0

    for prot in stream:
        if limit is not None and pidx >= limit:
            break
        pending.append(prot)
        pending_tokens += len(prot.sequence)
        pidx += 1
        bar.update(1)
        if pending_tokens >= embed.shard_tokens:
            flush()
    flush()
    bar.close()
    man["n_skipped"] += len(skipped)
    man["complete"] = True
    save_json(man, manifest_path)
    return out


def _check_resume(man: dict, embed: EmbedConfig, model: ModelConfig, hooks: HookConfig, provenance: dict) -> None:
    problems = []
    if man["model"]["name"] != model.name:
        problems.append(f"model {man['model']['name']!r} != {model.name!r}")
    if man["hooks"] != asdict(hooks):
        problems.append(f"hooks {man['hooks']} != {asdict(hooks)}")
    if man["provenance"]["fasta"] != provenance["fasta"]:
        problems.append(f"input FASTA {man['provenance']['fasta']} != {provenance['fasta']}")
    if man["embed"]["holdout_fraction"] != embed.holdout_fraction:
        problems.append("holdout_fraction differs")
    if problems:
        raise StoreError(
            f"{embed.store} already holds a store made with other settings ({'; '.join(problems)}); "
            "choose a new folder or delete this one"
        )


def _write_shard(out: Path, i: int, prots: list[Protein], first_pidx: int, plm: ProteinLM, hooks: list[Hook], embed: EmbedConfig, man: dict) -> None:
    name = f"shard_{i:05d}"
    tmp = out / (name + ".tmp")
    tmp.mkdir()
    n_tok = sum(len(p.sequence) for p in prots)
    D = plm.d_model
    bufs = {h.name: np.empty((n_tok, D), dtype=np.float16) for h in hooks}
    protein = np.empty(n_tok, dtype=np.int32)
    position = np.empty(n_tok, dtype=np.int32)
    heldout = np.empty(n_tok, dtype=bool)
    rows = []
    off = 0
    # embed in chunks of proteins so intermediate float32 tensors stay small
    chunk = 256
    for c in range(0, len(prots), chunk):
        part = prots[c : c + chunk]
        acts = plm.embed([p.sequence for p in part], hooks)
        for j, (p, a) in enumerate(zip(part, acts)):
            L = len(p.sequence)
            for h in hooks:
                bufs[h.name][off : off + L] = a[h.name].numpy().astype(np.float16)
            gi = first_pidx + c + j
            ho = is_heldout(p.sequence, embed.holdout_fraction)
            protein[off : off + L] = gi
            position[off : off + L] = np.arange(L)
            heldout[off : off + L] = ho
            off += L
            rows.append({
                "pidx": gi, "id": p.id, "description": p.description, "organism": p.organism,
                "taxid": p.taxid if p.taxid is not None else -1, "length": L, "sequence": p.sequence,
                "md5": p.md5, "split": "heldout" if ho else "train",
            })
    for k, v in bufs.items():
        np.save(tmp / f"{k}.npy", v)
    np.save(tmp / "protein.npy", protein)
    np.save(tmp / "position.npy", position)
    np.save(tmp / "heldout.npy", heldout)
    pd.DataFrame(rows).to_parquet(tmp / "proteins.parquet", index=False)
    os.replace(tmp, out / name)
    man["shards"].append({
        "name": name, "n_tokens": int(n_tok), "n_train_tokens": int((~heldout).sum()),
        "n_heldout_tokens": int(heldout.sum()), "first_protein": int(first_pidx), "n_proteins": len(prots),
    })
    man["n_proteins"] += len(prots)
    man["n_tokens"] += int(n_tok)


class ActivationStore:
    """Read side of a store; every access is per shard (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mp = self.path / MANIFEST
        if not mp.exists():
            raise StoreError(f"{self.path} is not an activation store (no {MANIFEST}); create one with `python -m esmsae embed`")
        self.manifest = json.loads(mp.read_text())
        if not self.manifest["shards"]:
            raise StoreError(f"{self.path}: the store has no finished shard yet")

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def hook_names(self) -> list[str]:
        return list(self.manifest["hook_names"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["hooks"]["layers"])

    @property
    def site(self) -> str:
        return self.manifest["hooks"]["site"]

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.manifest["model"])

    def check_hook(self, name: str) -> None:
        if name not in self.hook_names:
            raise StoreError(f"{self.path} has no activations for {name!r}; it holds {self.hook_names}")

    def proteins(self) -> pd.DataFrame:
        return pd.concat([pd.read_parquet(self.path / s["name"] / "proteins.parquet") for s in self.shards], ignore_index=True)

    def shard_array(self, i: int, name: str) -> np.ndarray:
        self.check_hook(name)
        return np.load(self.path / self.shards[i]["name"] / f"{name}.npy", mmap_mode="r")

    def shard_meta(self, i: int, what: str) -> np.ndarray:
        return np.load(self.path / self.shards[i]["name"] / f"{what}.npy", mmap_mode="r")

    def split_tokens(self, i: int, name: str, split: str) -> np.ndarray:
        """fp16 activations of one shard restricted to 'train' or 'heldout' tokens (a copy)."""
        arr = self.shard_array(i, name)
        ho = self.shard_meta(i, "heldout")
        mask = ho if split == "heldout" else ~ho
        return np.asarray(arr[mask])

    def n_tokens(self, split: str) -> int:
        key = "n_heldout_tokens" if split == "heldout" else "n_train_tokens"
        return sum(s[key] for s in self.shards)

    def iter_split(self, name: str, split: str, max_tokens: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (acts fp16 [T, D], protein [T], position [T]) per shard for a split ('train',
        'heldout' or 'all'), up to max_tokens."""
        seen = 0
        for i in range(len(self.shards)):
            ho = np.asarray(self.shard_meta(i, "heldout"))
            mask = np.ones_like(ho) if split == "all" else ho if split == "heldout" else ~ho
            if not mask.any():
                continue
            acts = np.asarray(self.shard_array(i, name)[mask])
            prot = np.asarray(self.shard_meta(i, "protein")[mask])
            pos = np.asarray(self.shard_meta(i, "position")[mask])
            if max_tokens is not None and seen + len(acts) > max_tokens:
                n = max_tokens - seen
                acts, prot, pos = acts[:n], prot[:n], pos[:n]
            seen += len(acts)
            yield acts, prot, pos
            if max_tokens is not None and seen >= max_tokens:
                return

    def sample(self, name: str, n: int, split: str = "train", seed: int = 0) -> torch.Tensor:
        """About n random tokens spread over all shards (for normalisation statistics)."""
        rng = np.random.default_rng(seed)
        per = max(1, n // len(self.shards))
        parts = []
        for i in range(len(self.shards)):
            ho = np.asarray(self.shard_meta(i, "heldout"))
            idx = np.flatnonzero(ho if split == "heldout" else ~ho)
            if len(idx) == 0:
                continue
            pick = np.sort(rng.choice(idx, size=min(per, len(idx)), replace=False))
            parts.append(np.asarray(self.shard_array(i, name)[pick]))
        return torch.from_numpy(np.concatenate(parts).astype(np.float32))

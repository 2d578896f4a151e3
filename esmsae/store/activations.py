"""Sharded activation store: FASTA -> protein LM -> fp16 activation shards on disk.

Layout of a store folder::

    manifest.json            model, hooks, d_in, data provenance, finished shards
    shard_00000/
        L3_resid.npy         float16 [T, D] per hook (memory-mappable)
        protein.npy          int32 [T]  global protein index of each token
        position.npy         int32 [T]  0-based residue position in that protein (pooled stores: the
                             last residue for pool=last, -1 for pool=mean)
        heldout.npy          bool  [T]  token belongs to a held-out protein
        proteins.parquet     one row per protein of the shard (id, sequence, organism, taxid, split...)

With ``EmbedConfig.pool`` mean / last a token is a whole protein (one vector per protein), for
protein-level SAEs such as esm-sae's. ``store_from_npy`` makes a store from a folder of
``.npy`` ``[N, d]`` activation batches (esm-sae's ``--np_dir``).

Writing streams: memory is bounded by one shard whatever the dataset size. A shard
is written to ``shard_xxxxx.tmp`` and renamed when complete, and only then entered
in the manifest (itself replaced atomically), so an interrupted run loses at most
the shard in progress and the same command resumes after the last finished shard.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from esmsae.config import EmbedConfig, HookConfig, ModelConfig, save_json
from esmsae.core.atomic import explain
from esmsae.core.fasta import Protein, is_heldout, read_proteins
from esmsae.lm.plm import Hook, ProteinLM, load_plm, pool_residues

MANIFEST = "manifest.json"
STORE_VERSION = 1  # the store's layout; a store in another version is refused on open (no compatibility branches)


def check_version(man: dict, path: Path) -> None:
    """Raise a clear error for a store written in another layout than this esmsae reads."""
    if man.get("version") != STORE_VERSION:
        raise StoreError(
            f"{path} is an activation store in format {man.get('version')}, and this esmsae reads format"
            f" {STORE_VERSION}: embed the proteins again (python -m esmsae embed) into a new folder"
        )


class StoreError(ValueError):
    pass


def _file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size}


def embed_fasta(
    embed: EmbedConfig, model: ModelConfig, hooks: HookConfig, plm: ProteinLM | None = None, progress: bool = True
) -> Path:
    """Stream ``embed.fasta`` through the model into ``embed.store`` (resumable).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) rank r embeds the shards i with i mod W == r. A shard's
    proteins are a pure function of the FASTA and the config, and each shard is embedded alone in
    the same batches, so the store is the same file for file as the one-process store. A shard is
    done when its folder exists, so a run stopped with W ranks resumes with any W'. Rank 0 alone
    writes the manifest, from the shards' ``meta.json`` sidecars.
    """
    if not embed.fasta:
        raise StoreError("EmbedConfig.fasta: no input FASTA given")
    if not embed.store:
        raise StoreError("EmbedConfig.store: no output folder given")
    out = Path(embed.store)
    created = not out.exists()
    try:
        return _embed(out, embed, model, hooks, plm, progress)
    except Exception:
        # a run that failed before finishing any shard (a bad record, a wrong layer) leaves nothing behind
        # that could pass for a store; one with finished shards is kept, so that a rerun resumes from them
        if created and out.is_dir() and not any(d.is_dir() and not d.name.endswith(".tmp") for d in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _embed(out: Path, embed: EmbedConfig, model: ModelConfig, hooks: HookConfig, plm: ProteinLM | None,
           progress: bool) -> Path:
    from dataclasses import replace

    from esmsae.config import resolve_device
    from esmsae.core.dist import barrier, process_group

    with process_group(resolve_device(model.device)) as w:
        if w.main:
            out.mkdir(parents=True, exist_ok=True)
            for tmp in out.glob("*.tmp"):  # a shard an interrupted run did not finish
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
        barrier()
        if plm is None:
            plm = load_plm(replace(model, device=w.device(resolve_device(model.device))) if w.distributed else model)
        hook_objs = [Hook(layer, hooks.site) for layer in hooks.layers]
        for h in hook_objs:
            plm.check_hook(h)
        man = _open_manifest(out, embed, model, hooks, plm, [h.name for h in hook_objs]) if w.main else None
        barrier()
        if man is None:  # the other ranks read what rank 0 created or checked
            man = json.loads((out / MANIFEST).read_text())
        if man["complete"]:
            return out
        trailing = _embed_shards(out, man, embed, plm, hook_objs, progress, w.rank, w.size)
        barrier()
        if not w.main:
            return out
        skipped = _collect_manifest(out, man, trailing)
        if man["n_proteins"] == 0:
            # nothing to train on: say so, and leave no empty store behind to be mistaken for a result
            shutil.rmtree(out, ignore_errors=True)
            why = (
                f"every record was invalid and skipped ({man['n_skipped']}, e.g. {skipped[0]})"
                if skipped
                else "the file has no records"
            )
            raise StoreError(f"{embed.fasta}: no proteins to embed: {why}")
        man["complete"] = True
        save_json(man, out / MANIFEST)
    return out


def _open_manifest(
    out: Path, embed: EmbedConfig, model: ModelConfig, hooks: HookConfig, plm: ProteinLM, names: list[str]
) -> dict:
    """The store's manifest: the existing one (checked to match these settings) or a new one."""
    provenance = {"fasta": _file_fingerprint(embed.fasta)}
    path = out / MANIFEST
    if path.exists():
        man = json.loads(path.read_text())
        check_version(man, out)
        _check_resume(man, embed, model, hooks, provenance)
        return man
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
    save_json(man, path)
    return man


SHARD_META = "meta.json"


def _shard_plan(embed: EmbedConfig) -> Iterator[tuple[int, list[Protein], int, list[str]]]:
    """The store's shards as (index, proteins, first protein index, records skipped while it was
    filled): a pure function of the FASTA and ``embed``, the same on every rank. The last item
    has index -1 and no proteins: the records skipped after the last shard."""
    skipped: list[tuple[str, str]] = []
    limit = embed.max_proteins or None
    i, pidx, pending, pending_tokens = 0, 0, [], 0
    for prot in read_proteins(embed.fasta, on_invalid=embed.on_invalid, skipped=skipped):
        if limit is not None and pidx >= limit:
            break
        pending.append(prot)
        pending_tokens += len(prot.sequence)
        pidx += 1
        if pending_tokens >= embed.shard_tokens:
            yield i, pending, pidx - len(pending), [f"{a}: {b}" for a, b in skipped]
            skipped.clear()
            i, pending, pending_tokens = i + 1, [], 0
    if pending:
        yield i, pending, pidx - len(pending), [f"{a}: {b}" for a, b in skipped]
        skipped.clear()
    yield -1, [], pidx, [f"{a}: {b}" for a, b in skipped]


def _shard_done(out: Path, i: int, man: dict, first: int, n: int) -> bool:
    """Shard i is finished with exactly the planned proteins. A shard that holds others (the last
    shard of a run cut short by --max-proteins, now extended) is removed, to be written again."""
    d = out / f"shard_{i:05d}"
    if not d.is_dir():
        return False
    meta = json.loads((d / SHARD_META).read_text()) if (d / SHARD_META).exists() else {}
    if (meta.get("first_protein"), meta.get("n_proteins")) == (first, n):
        return True
    shutil.rmtree(d)
    return False


def _embed_shards(out: Path, man: dict, embed: EmbedConfig, plm: ProteinLM, hooks: list[Hook], progress: bool,
                  rank: int = 0, world: int = 1) -> list[str]:
    """Embed this rank's unfinished shards (i mod world == rank), each written whole with its
    sidecar. One process also refreshes the manifest after every shard (what the app's progress
    reads). Returns the records skipped after the last shard."""
    limit = embed.max_proteins or None
    bar = tqdm(total=limit, unit="prot", desc="embed" if world == 1 else f"embed rank {rank}", disable=not progress)
    trailing: list[str] = []
    written: list[int] = []
    for i, prots, first, skipped in _shard_plan(embed):
        if i < 0:
            trailing = skipped
            break
        bar.update(len(prots))
        if i % world != rank or _shard_done(out, i, man, first, len(prots)):
            continue
        _write_shard(out, i, prots, first, plm, hooks, embed, skipped)
        written.append(i)
        if world == 1:
            _collect_manifest(out, man, [])
            save_json(man, out / MANIFEST)
    bar.close()
    if world > 1:
        print(f"[embed] rank {rank}/{world}: wrote shards {written}", file=sys.stderr, flush=True)
    return trailing


def _collect_manifest(out: Path, man: dict, trailing: list[str]) -> list[str]:
    """The manifest's shard list and counts from the finished shards' sidecars (in shard order);
    returns every skipped-record note."""
    n_skipped, entries, notes = 0, [], []
    for d in sorted(p for p in out.glob("shard_*") if p.is_dir() and not p.name.endswith(".tmp")):
        if (d / SHARD_META).exists():  # a shard without its sidecar was cut short: it is written again
            meta = json.loads((d / SHARD_META).read_text())
            notes += meta.pop("skipped_examples")
            n_skipped += meta.pop("n_skipped")
            entries.append(meta)
    man["shards"] = entries
    man["n_proteins"] = sum(e["n_proteins"] for e in entries)
    man["n_tokens"] = sum(e["n_tokens"] for e in entries)
    man["n_skipped"] = n_skipped + len(trailing)
    man["skipped_examples"] = (notes + trailing)[:20]
    return notes + trailing


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
    if man["embed"].get("pool", "none") != embed.pool:
        problems.append(f"pool {man['embed'].get('pool', 'none')!r} != {embed.pool!r}")
    if problems:
        raise StoreError(
            f"{embed.store} already holds a store made with other settings ({'; '.join(problems)}); "
            "choose a new folder or delete this one"
        )


def _write_shard(
    out: Path,
    i: int,
    prots: list[Protein],
    first_pidx: int,
    plm: ProteinLM,
    hooks: list[Hook],
    embed: EmbedConfig,
    skipped: list[str],
) -> None:
    name = f"shard_{i:05d}"
    tmp = out / (name + ".tmp")
    tmp.mkdir()
    pooled = embed.pool != "none"  # protein-level: one vector (token) per protein
    n_tok = len(prots) if pooled else sum(len(p.sequence) for p in prots)
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
            T = 1 if pooled else L
            for h in hooks:
                v = pool_residues(a[h.name], embed.pool).reshape(T, -1)
                bufs[h.name][off : off + T] = v.numpy().astype(np.float16)
            gi = first_pidx + c + j
            ho = is_heldout(p.sequence, embed.holdout_fraction)
            protein[off : off + T] = gi
            position[off : off + T] = (L - 1 if embed.pool == "last" else -1) if pooled else np.arange(L)
            heldout[off : off + T] = ho
            off += T
            rows.append({
                "pidx": gi, "id": p.id, "description": p.description, "organism": p.organism,
                "taxid": p.taxid if p.taxid is not None else -1, "length": L, "sequence": p.sequence,
                "md5": p.md5, "split": "heldout" if ho else "train",
            })
    try:
        for k, v in bufs.items():
            np.save(tmp / f"{k}.npy", v)
        np.save(tmp / "protein.npy", protein)
        np.save(tmp / "position.npy", position)
        np.save(tmp / "heldout.npy", heldout)
        pd.DataFrame(rows).to_parquet(tmp / "proteins.parquet", index=False)
        # the shard's manifest entry travels with it: rank 0 assembles the manifest from these
        save_json({"name": name, "n_tokens": int(n_tok), "n_train_tokens": int((~heldout).sum()),
                   "n_heldout_tokens": int(heldout.sum()), "first_protein": int(first_pidx), "n_proteins": len(prots),
                   "n_skipped": len(skipped), "skipped_examples": skipped[:20]}, tmp / SHARD_META)
        os.replace(tmp, out / name)
    except OSError as e:  # a full disk: drop the half shard, keep the finished ones, say so
        shutil.rmtree(tmp, ignore_errors=True)
        raise explain(out / name, e, "activation shard") from e


class ActivationStore:
    """Read side of a store; every access is per shard (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mp = self.path / MANIFEST
        if not mp.exists():
            raise StoreError(
                f"{self.path} is not an activation store (no {MANIFEST}); create one with `python -m esmsae embed`"
            )
        self.manifest = json.loads(mp.read_text())
        check_version(self.manifest, self.path)
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

    def check_hook(self, name: str) -> None:
        if name not in self.hook_names:
            raise StoreError(f"{self.path} has no activations for {name!r}; it holds {self.hook_names}")

    def proteins(self) -> pd.DataFrame:
        return pd.concat(
            [pd.read_parquet(self.path / s["name"] / "proteins.parquet") for s in self.shards], ignore_index=True
        )

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

    def iter_split(
        self, name: str, split: str, max_tokens: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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

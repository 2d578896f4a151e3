"""Feature index: one streaming pass of a protein set through protein LM + SAE into DuckDB.

Memory is bounded by (features x examples kept) and (features x groups), never by the
number of proteins: per-feature statistics are running sums, top examples are a
running top-N, quantile examples come from a uniform reservoir per feature (Vitter's
Algorithm R), and the sparse codes of *labelled* proteins go to a temporary CSR file
on disk so the concept pass can run once the feature maxima are known (InterPLM
normalises each feature by its max before thresholding, Simon & Zou 2024).

Tables: meta, proteins, features, feature_hist, top_examples, quantile_examples,
structure_tracks, concepts, concept_f1, groups, group_usage. The file is built under
``<out>.tmp`` and renamed, so a reader never sees half an index. User labels live in
a separate file (:func:`labels_path`) so that rebuilding never loses them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import WEIGHTS, check_compatible, load_sae, model_config_of
from .concepts import Labeled, kingdom_of, load_all
from .config import IndexConfig, auto_batch_tokens
from .evaluate import hook_of, read_eval
from .fasta import Protein, SequenceError, clean_sequence, parse_header, read_proteins
from .plm import ProteinLM, load_plm

THRESHOLDS = (0.0, 0.15, 0.5, 0.6, 0.8)  # fractions of each feature's max (InterPLM)
HIST_EDGES = np.concatenate([[0.0], np.logspace(-4, 4, 161)])  # activation histogram bin edges (20 per decade)
DENSE_FREQ = 0.1  # a feature firing on more than this fraction of residues is "dense"
EXAMPLE_BLOCK = 2048  # features per block when the example tables are written
MIN_DOMAINS = 10  # a concept needs this many annotated domains to be a feature's best concept
MAX_COVERAGE = 0.5  # ...and may cover at most this fraction of its source's residues (not "everything")


class IndexError_(ValueError):
    """Bad index input (grouping file, protein set); the message names the item."""


@dataclass
class Item(Protein):
    """One protein to index: a FASTA protein plus taxonomy, labels, structure and groups."""

    kingdom: str = ""
    lineage: str = ""
    source: str = ""
    structure: str = ""
    chain: str = ""
    labels: list[Labeled] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # grouping -> group


def md5(seq: str) -> str:
    return hashlib.md5(seq.encode()).hexdigest()


# ---------------------------------------------------------------- protein sets and groupings
def grouping_json(text: str, name: str) -> Iterator[tuple[str, str, str]]:
    """(group, header, sequence) from esm-sae style JSON ``{group: [[sequence, header], ...]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexError_(f"{name}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise IndexError_(f"{name}: expected an object {{group: [[sequence, header], ...]}}")
    for group, members in data.items():
        if not isinstance(members, list):
            raise IndexError_(f"{name}: group {group!r} is not a list of [sequence, header] pairs")
        for j, m in enumerate(members):
            if not (isinstance(m, (list, tuple)) and len(m) >= 1 and isinstance(m[0], str)):
                raise IndexError_(f"{name}: group {group!r}, entry {j}: expected [sequence, header]")
            header = m[1] if len(m) > 1 and isinstance(m[1], str) else f"{group}_{j}"
            yield str(group), header, clean_sequence(m[0], f"{name} group {group!r} entry {j}")


def grouping_tsv(text: str, name: str) -> list[tuple[str, str]]:
    """(protein id, group) pairs of a ``protein_id<TAB>group`` file (an ``id<TAB>group`` header is allowed)."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise IndexError_(f"{name}, line {n}: expected 'protein_id<TAB>group', got {line[:80]!r}")
        if n == 1 and parts[0].lower() in ("id", "protein", "protein_id"):
            continue
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def read_grouping(path: str | os.PathLike) -> tuple[str, dict[str, str], list[Protein]]:
    """A grouping file -> (grouping name, {protein id or 'md5:<hash>': group}, extra proteins).

    TSV: ``protein_id<TAB>group`` per line (a header line ``id<TAB>group`` is allowed).
    JSON: ``{group: [[sequence, header], ...]}`` as in esm-sae's sampled_sequences.json; those
    proteins are matched by sequence and added to the set when not already there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"grouping file not found: {path}")
    name = path.stem
    mapping: dict[str, str] = {}
    extra: list[Protein] = []
    if path.suffix == ".json":
        for group, header, seq in grouping_json(path.read_text(), path.name):
            pid, desc, org, taxid = parse_header(header)
            extra.append(Protein(pid, seq, desc, org, taxid))
            mapping["md5:" + md5(seq)] = group
        return name, mapping, extra
    return name, dict(grouping_tsv(path.read_text(), str(path))), extra


_INHERITED = ("organism", "taxid", "kingdom", "lineage", "structure", "chain", "description")


def _fill_missing(dst, src) -> None:
    """Copy metadata that ``dst`` lacks from ``src`` (another record of the same sequence)."""
    for k in _INHERITED:
        if not getattr(dst, k, None) and getattr(src, k, None):
            setattr(dst, k, getattr(src, k))


def collect(cfg: IndexConfig, labelled: list[Labeled] | None = None, skipped: list | None = None) -> tuple[list[Item], dict[str, Any]]:
    """Protein set of an index: FASTA proteins (+ labelled proteins, + grouping-file proteins),
    de-duplicated by sequence, with labels, taxonomy and group memberships attached."""
    report: dict[str, Any] = {"skipped_invalid": 0, "duplicate_sequences": 0, "unknown_group_ids": {}}
    items: dict[str, Item] = {}
    ids: dict[str, str] = {}

    def add(item: Item) -> Item:
        h = md5(item.sequence)
        if h in items:
            report["duplicate_sequences"] += 1
            old = items[h]
            _fill_missing(old, item)
            old.labels += item.labels
            if item.source and item.source not in old.source.split(","):
                old.source += "," + item.source
            return old
        if item.id in ids:
            item.id = f"{item.id}#{len(items)}"
        ids[item.id] = h
        items[h] = item
        return item

    sk: list = [] if skipped is None else skipped
    for f in cfg.fasta:
        for p in read_proteins(f, on_invalid=cfg.on_invalid, skipped=sk):
            add(Item(p.id, p.sequence, p.description, p.organism, p.taxid, kingdom=kingdom_of(p.taxid), source=Path(f).name.split(".")[0]))
    report["skipped_invalid"] = len(sk)
    for lab in labelled or []:
        h = md5(lab.sequence)
        if h in items:
            items[h].labels.append(lab)
            _fill_missing(items[h], lab)
        elif cfg.add_labelled:
            add(Item(lab.id, lab.sequence, "", lab.organism, lab.taxid, kingdom=lab.kingdom, lineage=lab.lineage, source=lab.source,
                                 structure=lab.structure, chain=lab.chain, labels=[lab]))
    for gf in cfg.groups:
        name, mapping, extra = read_grouping(gf)
        for p in extra:
            if md5(p.sequence) not in items:
                add(Item(p.id, p.sequence, p.description, p.organism, p.taxid, kingdom=kingdom_of(p.taxid), source=name))
        unknown = 0
        for key, group in mapping.items():
            # ids as in the FASTA header's first word, or as parsed (sp|P12345|NAME -> P12345)
            h = key[4:] if key.startswith("md5:") else ids.get(key) or ids.get(parse_header(key)[0])
            if h is None or h not in items:
                unknown += 1
                continue
            items[h].groups[name] = group
        if unknown == len(mapping) and mapping:
            raise IndexError_(f"{gf}: none of its {len(mapping)} protein ids is in the protein set (first: {next(iter(mapping))!r})")
        report["unknown_group_ids"][name] = unknown
    out = list(items.values())
    for it in out:
        it.kingdom = it.kingdom or kingdom_of(it.taxid, it.lineage)
        if it.kingdom:
            it.groups.setdefault("kingdom", it.kingdom)
        if it.organism:
            it.groups.setdefault("organism", it.organism)
        if it.lineage:
            ranks = [r.strip() for r in it.lineage.split(";")]
            if len(ranks) > cfg.lineage_rank:
                it.groups.setdefault("lineage", ranks[cfg.lineage_rank])
    if cfg.max_proteins:
        out = out[: cfg.max_proteins]
    return out, report


# ---------------------------------------------------------------- streaming statistics
class _TopN:
    """Per-feature running top-N of (protein max activation, protein, sparse track)."""

    def __init__(self, n_features: int, n: int):
        self.val_FN = np.full((n_features, n), -np.inf, dtype=np.float32)
        self.items: list[dict[int, tuple]] = [dict() for _ in range(n_features)]  # slot -> (pidx, track offset, length)

    def offer(self, f_P: np.ndarray, vmax_P: np.ndarray, pidx: int, put: Callable[[int], tuple[int, int]]) -> None:
        """One protein's (feature, max activation) pairs; ``put(j)`` spills pair j's track and
        returns where it lies (see _TrackSpill)."""
        # only pairs beating the feature's current N-th best need Python work
        cand = np.flatnonzero(vmax_P > self.val_FN[f_P].min(1))
        for j in cand[np.argsort(-vmax_P[cand], kind="stable")]:
            f = f_P[j]
            slot = int(self.val_FN[f].argmin())
            if vmax_P[j] <= self.val_FN[f, slot]:
                continue
            self.val_FN[f, slot] = vmax_P[j]
            self.items[f][slot] = (pidx, *put(j))


class _Reservoir:
    """Uniform sample of R firing proteins per feature (Algorithm R, Vitter 1985)."""

    def __init__(self, n_features: int, r: int, seed: int):
        self.r = r
        self.seen_F = np.zeros(n_features, dtype=np.int64)
        self.items: list[dict[int, tuple]] = [dict() for _ in range(n_features)]
        self.rng = np.random.default_rng(seed)

    def offer(self, f_P: np.ndarray, vmax_P: np.ndarray, pidx: int, put: Callable[[int], tuple[int, int]]) -> None:
        order = np.argsort(f_P, kind="stable")
        f_sorted = f_P[order]
        # ordinal of each pair among all firing proteins seen so far for its feature (1-based)
        first = np.searchsorted(f_sorted, f_sorted, side="left")
        ordinal = self.seen_F[f_sorted] + (np.arange(len(f_sorted)) - first) + 1
        np.add.at(self.seen_F, f_P, 1)
        slot = np.where(ordinal <= self.r, ordinal - 1, (self.rng.random(len(ordinal)) * ordinal).astype(np.int64))
        keep = slot < self.r
        for j, s in zip(order[keep], slot[keep]):
            self.items[f_P[j]][int(s)] = (pidx, float(vmax_P[j]), *put(j))


class _TrackSpill:
    """Append-only file of the sparse tracks (positions int32, then values float32) that the
    top-N and the reservoir keep; they hold only (offset, length). Held in memory, the tracks
    of all example slots (features x (top_n + reservoir), 614k with 10,240 latents) grow as the
    slots fill and as the strongest examples drift to proteins with longer tracks; on disk,
    memory stays at a few integers per slot. The file grows only with the accepted offers,
    O(slots x log N)."""

    def __init__(self, folder: Path):
        self.path = folder / "tracks.bin"
        self.fh = open(self.path, "wb")
        self.n_words = 0
        self.words: np.ndarray | None = None

    def put(self, pos: np.ndarray, vals: np.ndarray) -> tuple[int, int]:
        off, n = self.n_words, len(pos)
        self.fh.write(pos.astype(np.int32).tobytes())
        self.fh.write(vals.astype(np.float32).tobytes())
        self.n_words += 2 * n
        return off, n

    def finish(self) -> None:
        self.fh.close()
        self.words = np.memmap(self.path, dtype=np.int32, mode="r") if self.n_words else np.zeros(0, np.int32)

    def get(self, off: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.words is not None, "finish() first"
        return self.words[off:off + n], self.words[off + n:off + 2 * n].view(np.float32)


class _CSRWriter:
    """Sparse codes of labelled proteins on disk (row pointers, feature ids, values)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.f_idx = open(folder / "idx.bin", "wb")
        self.f_val = open(folder / "val.bin", "wb")
        self.offsets = [0]
        self.pidx: list[int] = []

    def add(self, pidx: int, rows_R: np.ndarray, idx_R: np.ndarray, val_R: np.ndarray) -> None:
        # stored per protein as (residue, feature, value) triples: residue packed in the high bits
        key = rows_R.astype(np.int64) * (1 << 20) + idx_R.astype(np.int64)
        key.tofile(self.f_idx)
        val_R.astype(np.float32).tofile(self.f_val)
        self.offsets.append(self.offsets[-1] + len(key))
        self.pidx.append(pidx)

    def close(self) -> None:
        self.f_idx.close()
        self.f_val.close()

    def read(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(protein, keys, values) in written order, one protein in memory at a time."""
        with open(self.folder / "idx.bin", "rb") as fi, open(self.folder / "val.bin", "rb") as fv:
            for j, pidx in enumerate(self.pidx):
                n = self.offsets[j + 1] - self.offsets[j]
                yield pidx, np.fromfile(fi, dtype=np.int64, count=n), np.fromfile(fv, dtype=np.float32, count=n)


def _pairs(rows_R: np.ndarray, idx_R: np.ndarray, val_R: np.ndarray):
    """Residue-level sparse entries of one protein -> per-feature max, count and track slices."""
    order = np.lexsort((rows_R, idx_R))  # by feature, then residue
    f, r, v = idx_R[order], rows_R[order], val_R[order]
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]]) if len(f) else np.zeros(0, np.int64)
    feats = f[starts]
    vmax = np.maximum.reduceat(v, starts) if len(f) else np.zeros(0, np.float32)
    counts = np.diff(np.r_[starts, len(f)])
    return feats, vmax, counts, starts, r, v


# ---------------------------------------------------------------- concept pass
def _concept_counts(csr: "_CSRWriter", items: list[Item], fmax_F: np.ndarray, concept_ids: dict[str, int],
                    source_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Per feature x concept x threshold: true-positive residues and hit domains; per
    feature x source x threshold: active residues (the precision denominator)."""
    F, C, S, T = len(fmax_F), len(concept_ids), len(source_ids), len(THRESHOLDS)
    tp = np.zeros((C, F, T), np.int64)
    dom = np.zeros((C, F, T), np.int64)
    act = np.zeros((S, F, T), np.int64)
    thr = np.asarray(THRESHOLDS, np.float32)
    safe_max = np.where(fmax_F > 0, fmax_F, 1.0).astype(np.float32)
    for pidx, key, val in csr.read():
        res, feat = key >> 20, key & ((1 << 20) - 1)
        # level = how many thresholds the normalised activation exceeds (t=0 means "fires")
        level = (val[:, None] / safe_max[feat][:, None] > thr[None, :]).sum(1)
        it = items[pidx]
        L = len(it.sequence)
        for s_name in {lab.source for lab in it.labels}:
            s = source_ids[s_name]
            act[s] += _level_counts(feat, level, F, T)
        for lab in it.labels:
            for cname, spans in lab.spans.items():
                c = concept_ids[cname]
                dom_id = np.full(L, -1, np.int64)
                for d, (x, y) in enumerate(spans):
                    dom_id[x:y] = d
                inside = dom_id[res] >= 0
                tp[c] += _level_counts(feat[inside], level[inside], F, T)
                # a domain is hit at threshold t when any of its residues is active at t
                if inside.any():
                    k = dom_id[res[inside]] * F + feat[inside]
                    lv = level[inside]
                    o = np.lexsort((-lv, k))
                    first = np.r_[True, k[o][1:] != k[o][:-1]]
                    kk, ll = k[o][first], lv[o][first]
                    dom[c] += _level_counts(kk % F, ll, F, T)
    return {"tp": tp, "dom": dom, "act": act}


def _level_counts(feat: np.ndarray, level: np.ndarray, F: int, T: int) -> np.ndarray:
    """Counts per feature of entries whose level exceeds each threshold index -> [F, T]."""
    h = np.bincount(feat * (T + 1) + level, minlength=F * (T + 1)).reshape(F, T + 1)
    # entries at level l are active for thresholds 0..l-1: reverse cumulative sum
    return np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:]


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    q = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def enrichment(n_fire_GF: np.ndarray, n_prot_G: np.ndarray) -> dict[str, np.ndarray]:
    """Feature enrichment of each group against all other groups of the grouping.

    Per (group, feature) 2x2 table: fires / does not fire x in group / in the others.
    Log odds ratio with the Haldane-Anscombe +0.5 correction; one-sided Fisher's exact
    test (hypergeometric upper tail, P(X >= a)); Benjamini-Hochberg FDR over all tests.
    """
    from scipy.stats import hypergeom

    N = n_prot_G.sum()
    K_F = n_fire_GF.sum(0)
    a = n_fire_GF.astype(float)
    b = n_prot_G[:, None] - a
    c = K_F[None, :] - a
    d = (N - n_prot_G)[:, None] - c
    log_odds = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    p = hypergeom.sf(a - 1, N, np.broadcast_to(K_F, a.shape), np.broadcast_to(n_prot_G[:, None], a.shape))
    p = np.where(a > 0, p, 1.0)
    q = _benjamini_hochberg(p.ravel()).reshape(p.shape)
    return {"log_odds": log_odds, "p": p, "q": q}


# ---------------------------------------------------------------- the build
SCHEMA = {
    "meta": "key VARCHAR, value VARCHAR",
    "proteins": "pidx INTEGER, id VARCHAR, description VARCHAR, length INTEGER, sequence VARCHAR, organism VARCHAR, taxid BIGINT, "
                "kingdom VARCHAR, lineage VARCHAR, source VARCHAR, label_sources VARCHAR, structure VARCHAR, chain VARCHAR, "
                "n_active_features INTEGER",
}


def labels_path(index_path: str | os.PathLike) -> Path:
    """User-written feature labels: a DuckDB file beside the index (never rebuilt)."""
    p = Path(index_path)
    return p.with_name(p.stem + ".labels.duckdb")


def _ref_stat(sae, which: int, F: int) -> np.ndarray:
    t = sae.display_stats()[which]
    return np.full(F, np.nan) if t is None else t.detach().float().cpu().numpy().astype(np.float64)


def build_index(cfg: IndexConfig, plm: ProteinLM | None = None, items: list[Item] | None = None, progress: bool = True,
                report: dict | None = None) -> Path:
    """Build the DuckDB feature index of ``cfg.sae`` over a protein set; returns its path."""
    t0 = time.time()
    out = Path(cfg.out)
    if not cfg.out:
        raise IndexError_("IndexConfig.out: give the index file to write")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sae, meta = load_sae(cfg.sae)
    if plm is None:
        plm = load_plm(model_config_of(meta, cfg.model))
    check_compatible(meta, plm, strict_name=not cfg.model)
    batch_tokens = cfg.batch_tokens or auto_batch_tokens(plm.cfg.device)
    hook = hook_of(meta)
    plm.check_hook(hook)
    report = dict(report or {})
    if items is None:
        labelled = load_all(Path(cfg.concepts)) if cfg.concepts else []
        items, report = collect(cfg, labelled)
    if not items:
        raise IndexError_("the protein set is empty (check --fasta / --concepts --add-labelled)")
    F = sae.cfg.n_latents
    N = len(items)

    source_of = {c: lab.source for it in items for lab in it.labels for c in lab.spans}  # concept names carry their source
    concept_names = sorted(source_of)
    concept_ids = {c: i for i, c in enumerate(concept_names)}
    source_names = sorted({lab.source for it in items for lab in it.labels})
    source_ids = {s: i for i, s in enumerate(source_names)}
    concept_source = np.array([source_ids[source_of[c]] for c in concept_names], np.int64)
    groupings = sorted({g for it in items for g in it.groups})
    group_names = {g: sorted({it.groups[g] for it in items if g in it.groups}) for g in groupings}
    group_ids = {g: {n: i for i, n in enumerate(names)} for g, names in group_names.items()}
    n_fire_G = {g: np.zeros((len(group_names[g]), F), np.int64) for g in groupings}
    sum_max_G = {g: np.zeros((len(group_names[g]), F), np.float64) for g in groupings}

    # running per-feature statistics
    fire_res_F = np.zeros(F, np.int64)
    fire_prot_F = np.zeros(F, np.int64)
    sum_F = np.zeros(F, np.float64)
    max_F = np.zeros(F, np.float32)
    hist_FH = np.zeros((F, len(HIST_EDGES) - 1), np.int64)
    top = _TopN(F, cfg.top_n)
    res = _Reservoir(F, cfg.reservoir, cfg.seed)
    n_res = 0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_db = out.with_name(out.name + ".tmp")
    for p in (tmp_db, Path(str(tmp_db) + ".wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp_db))
    con.execute(f"CREATE TABLE proteins ({SCHEMA['proteins']})")
    scratch = Path(tempfile.mkdtemp(prefix="esmsae_index_", dir=out.parent))
    csr = _CSRWriter(scratch)
    spill = _TrackSpill(scratch)
    trim = _HeapTrim()
    skipped_model: list[str] = []
    struct_rows: list[tuple] = []
    order = sorted(range(N), key=lambda i: len(items[i].sequence))  # length-sorted: little padding
    bar = tqdm(total=sum(len(it.sequence) for it in items), desc="index", unit="res", disable=not progress, unit_scale=True)
    try:
        batch: list[int] = []
        budget = 0

        def run(batch: list[int]) -> None:
            nonlocal n_res
            seqs = [items[i].sequence for i in batch]
            try:
                acts = [a[hook.name] for a in plm.embed(seqs, [hook])]
            except SequenceError as e:
                if cfg.on_invalid == "error":
                    raise
                skipped_model.append(str(e))
                return
            rows = []
            for i, a_LD in zip(batch, acts):
                with torch.no_grad():
                    lat = sae.encode(a_LD)
                acts_LK, idx_LK = lat.acts_BK.float().numpy(), lat.idx_BK.numpy()
                nz = acts_LK > 0
                r_R = np.nonzero(nz)[0].astype(np.int64)
                f_R = idx_LK[nz].astype(np.int64)
                v_R = acts_LK[nz]
                L = a_LD.shape[0]
                n_res += L
                feats, vmax, counts, starts, r_sorted, v_sorted = _pairs(r_R, f_R, v_R)
                fire_res_F[feats] += counts
                fire_prot_F[feats] += 1
                np.add.at(sum_F, f_R, v_R)
                np.maximum.at(max_F, feats, vmax)
                hb = np.clip(np.searchsorted(HIST_EDGES, v_R, side="right") - 1, 0, len(HIST_EDGES) - 2)
                np.add.at(hist_FH, (f_R, hb), 1)
                ends = np.r_[starts[1:], len(r_sorted)] if len(starts) else starts
                tracks = [(r_sorted[s:e].astype(np.int32), v_sorted[s:e].astype(np.float32)) for s, e in zip(starts, ends)]
                spilled: dict[int, tuple[int, int]] = {}

                def put(j: int) -> tuple[int, int]:  # a track goes to disk once, when first kept
                    if j not in spilled:
                        spilled[j] = spill.put(*tracks[j])
                    return spilled[j]
                top.offer(feats, vmax, i, put)
                res.offer(feats, vmax, i, put)
                it = items[i]
                for g, grp in it.groups.items():
                    gi = group_ids[g][grp]
                    n_fire_G[g][gi, feats] += 1
                    sum_max_G[g][gi, feats] += vmax
                if it.labels:
                    csr.add(i, r_R, f_R, v_R)
                if it.structure:  # full tracks of proteins with a structure, to colour it by any feature
                    struct_rows.extend((i, int(f), float(m), t[0].tolist(), t[1].tolist()) for f, m, t in zip(feats, vmax, tracks))
                rows.append((i, len(feats)))
            _write_proteins(con, items, rows)
            trim()
            bar.update(sum(len(s) for s in seqs))

        for i in order:
            L = len(items[i].sequence) + 2
            cost = min(L, plm.max_residues + 2)
            if batch and (len(batch) + 1) * max(cost, budget) > batch_tokens:
                run(batch)
                batch, budget = [], 0
            batch.append(i)
            budget = max(budget, cost)
        if batch:
            run(batch)
        bar.close()
        csr.close()

        # ------------------------------------------------ features
        n_done = int(con.execute("SELECT count(*) FROM proteins").fetchall()[0][0])
        freq_res = fire_res_F / max(n_res, 1)
        freq_prot = fire_prot_F / max(n_done, 1)
        idf = np.log(max(n_done, 1) / np.maximum(fire_prot_F, 1))
        mean_act = np.where(fire_res_F > 0, sum_F / np.maximum(fire_res_F, 1), 0.0)
        qs = _hist_quantiles(hist_FH, (0.5, 0.9, 0.99))

        # ------------------------------------------------ concepts
        conc = _concept_counts(csr, items, max_F, concept_ids, source_ids)
        n_res_C = np.zeros(len(concept_names), np.int64)
        n_dom_C = np.zeros(len(concept_names), np.int64)
        n_prot_C = np.zeros(len(concept_names), np.int64)
        src_res = np.zeros(len(source_names), np.int64)
        for i in set(csr.pidx):
            for lab in items[i].labels:
                for cname, spans in lab.spans.items():
                    c = concept_ids[cname]
                    n_res_C[c] += sum(y - x for x, y in spans)
                    n_dom_C[c] += len(spans)
                    n_prot_C[c] += 1
            for s_name in {lab.source for lab in items[i].labels}:
                src_res[source_ids[s_name]] += len(items[i].sequence)
        coverage_C = n_res_C / np.maximum(src_res[concept_source], 1) if len(concept_names) else np.zeros(0)
        f1_df, best = _concept_table(conc, concept_names, concept_source, n_res_C, n_dom_C, coverage_C)

        # ------------------------------------------------ groups
        group_rows = []
        usage_frames = []
        top_group = np.array([""] * F, dtype=object)
        members_G = {g: np.zeros(len(group_names[g]), np.int64) for g in groupings}
        for it in items:
            for g, grp in it.groups.items():
                members_G[g][group_ids[g][grp]] += 1
        for g in groupings:
            n_prot = members_G[g]
            enr = enrichment(n_fire_G[g], n_prot)
            for gi, name in enumerate(group_names[g]):
                group_rows.append((g, name, int(n_prot[gi])))
            Gn, Fn = n_fire_G[g].shape
            usage_frames.append(pd.DataFrame({
                "grouping": g, "grp": np.repeat(group_names[g], Fn), "feature": np.tile(np.arange(Fn), Gn),
                "n_proteins": np.repeat(n_prot, Fn), "n_fire": n_fire_G[g].ravel(),
                "frac": (n_fire_G[g] / np.maximum(n_prot[:, None], 1)).ravel(),
                "mean_act": (sum_max_G[g] / np.maximum(n_prot[:, None], 1)).ravel(),
                "log_odds": enr["log_odds"].ravel(), "p": enr["p"].ravel(), "q": enr["q"].ravel()}))
            if g == "kingdom" or (g == groupings[0] and "kingdom" not in groupings):
                lo = np.where(n_fire_G[g] > 0, enr["log_odds"], -np.inf)
                best_g = lo.argmax(0)
                top_group = np.where(fire_prot_F > 0, np.array(group_names[g], dtype=object)[best_g], "")

        # ------------------------------------------------ feature map
        W_dec = sae.W_dec.detach().float().numpy()
        umap_xy, cluster = _feature_map(W_dec, cfg.seed, cfg.umap)

        features = pd.DataFrame({
            "feature": np.arange(F), "freq_residue": freq_res, "freq_protein": freq_prot, "n_proteins": fire_prot_F,
            "n_residues": fire_res_F, "max_act": max_F, "mean_act": mean_act, "q50": qs[:, 0], "q90": qs[:, 1], "q99": qs[:, 2],
            "dead": fire_res_F == 0, "dense": freq_res > DENSE_FREQ, "idf": idf,
            "best_concept": best["concept"], "best_f1": best["f1"], "best_threshold": best["threshold"],
            "best_precision": best["precision"], "best_recall": best["recall"],
            "label": np.where(best["f1"] > 0.5, best["concept"], ""), "top_group": top_group,
            "cluster": cluster, "umap_x": umap_xy[:, 0], "umap_y": umap_xy[:, 1],
            # reference display statistics shipped with the SAE (NaN when it has none)
            "ref_max": _ref_stat(sae, 0, F), "ref_idf": _ref_stat(sae, 1, F)})
        con.register("features_df", features)
        con.execute("CREATE TABLE features AS SELECT * FROM features_df")
        hist_f, hist_b = np.nonzero(hist_FH)
        con.register("hist_df", pd.DataFrame({"feature": hist_f, "bin_lo": HIST_EDGES[hist_b], "bin_hi": HIST_EDGES[hist_b + 1], "count": hist_FH[hist_f, hist_b]}))
        con.execute("CREATE TABLE feature_hist AS SELECT * FROM hist_df")
        spill.finish()
        # written in blocks of features, in feature order (DuckDB keeps insertion order), so the
        # tracks in memory at once are bounded by the block, not by the whole index
        for lo in range(0, F, EXAMPLE_BLOCK):
            hi = min(F, lo + EXAMPLE_BLOCK)
            verb = "CREATE TABLE {} AS" if lo == 0 else "INSERT INTO {}"
            con.register("top_df", _top_frame(top, spill, lo, hi))
            con.execute(verb.format("top_examples") + " SELECT * FROM top_df ORDER BY feature, rank")
            con.register("q_df", _quantile_frame(res, spill, max_F, cfg.quantile_bins, cfg.per_bin, lo, hi))
            con.execute(verb.format("quantile_examples") + " SELECT * FROM q_df ORDER BY feature, bin, max_act DESC")
            con.unregister("top_df")
            con.unregister("q_df")
        con.register("struct_df", pd.DataFrame(struct_rows, columns=["pidx", "feature", "max_act", "positions", "values"]))
        con.execute("CREATE TABLE structure_tracks AS SELECT * FROM struct_df ORDER BY feature, max_act DESC")
        con.register("concepts_df", pd.DataFrame({"concept": concept_names, "source": [source_names[s] for s in concept_source],
                                                  "n_residues": n_res_C, "n_domains": n_dom_C, "n_proteins": n_prot_C,
                                                  "coverage": coverage_C, "best_eligible": (n_dom_C >= MIN_DOMAINS) & (coverage_C <= MAX_COVERAGE)}))
        con.execute("CREATE TABLE concepts AS SELECT * FROM concepts_df")
        con.register("f1_df", f1_df)
        con.execute("CREATE TABLE concept_f1 AS SELECT * FROM f1_df ORDER BY feature, f1 DESC")
        con.register("groups_df", pd.DataFrame(group_rows, columns=["grouping", "grp", "n_proteins"]))
        con.execute("CREATE TABLE groups AS SELECT * FROM groups_df")
        usage = pd.concat(usage_frames) if usage_frames else pd.DataFrame(columns=["grouping", "grp", "feature", "n_proteins", "n_fire", "frac", "mean_act", "log_odds", "p", "q"])
        con.register("usage_df", usage)
        con.execute("CREATE TABLE group_usage AS SELECT * FROM usage_df WHERE n_fire > 0 ORDER BY grouping, feature")
        wsha = hashlib.sha256((Path(cfg.sae) / WEIGHTS).read_bytes()).hexdigest()[:16]
        info = {
            "esmsae_version": __version__, "sae": str(cfg.sae), "sae_sha256": wsha, "sae_cfg": meta, "eval": read_eval(cfg.sae),
            "model": plm.name, "hook": hook.name, "layer": hook.layer, "site": hook.site, "n_latents": F, "d_in": sae.d_in,
            "n_proteins": n_done, "n_residues": int(n_res), "thresholds": list(THRESHOLDS), "top_n": cfg.top_n,
            "quantile_bins": cfg.quantile_bins, "per_bin": cfg.per_bin, "build_seconds": round(time.time() - t0, 1),
            "skipped_model": len(skipped_model), "skipped_examples": skipped_model[:20], "collect": report,
            "index_config": asdict(cfg), "normalisations": {"raw": "SAE activation", "max": "activation / feature max (0..1)",
                                                            "idf": "activation / feature max x IDF, IDF = log(N proteins / proteins where it fires)"},
        }
        con.execute(f"CREATE TABLE meta ({SCHEMA['meta']})")
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, default=str)) for k, v in info.items()])
        con.execute("CHECKPOINT")
        con.close()
        os.replace(tmp_db, out)
    except BaseException:
        try:
            con.close()
        except Exception:
            pass
        tmp_db.unlink(missing_ok=True)
        raise
    finally:
        spill.fh.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return out


class _HeapTrim:
    """Hands freed heap memory back to the OS at most once a second (glibc's malloc_trim).

    The streaming pass frees as much as it allocates, but glibc keeps freed blocks of its
    arenas, so RSS crept up with the longest proteins (which come last: batches are sorted by
    length) while live memory stayed flat: 2.35 GB RSS vs 1.25 GB after a trim at 3,750 of
    4,000 proteins with 10,240 latents. A no-op where glibc is not the allocator.
    """

    def __init__(self, every_s: float = 1.0):
        self.every_s, self.last = every_s, time.monotonic()
        try:
            import ctypes

            self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self.trim = None

    def __call__(self) -> None:
        if self.trim is not None and time.monotonic() - self.last >= self.every_s:
            self.trim(0)
            self.last = time.monotonic()


def _write_proteins(con, items: list[Item], rows: list[tuple[int, int]]) -> None:
    if not rows:
        return
    recs = []
    for i, n_act in rows:
        it = items[i]
        recs.append((i, it.id, it.description, len(it.sequence), it.sequence, it.organism, it.taxid if it.taxid is not None else -1,
                     it.kingdom, it.lineage, it.source, ",".join(sorted({lab.source for lab in it.labels})), it.structure, it.chain, n_act))
    df = pd.DataFrame(recs, columns=["pidx", "id", "description", "length", "sequence", "organism", "taxid", "kingdom", "lineage",
                                     "source", "label_sources", "structure", "chain", "n_active_features"])
    con.register("_new_proteins", df)
    con.execute("INSERT INTO proteins SELECT * FROM _new_proteins")
    con.unregister("_new_proteins")


def _hist_quantiles(hist_FH: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of each feature's non-zero activations from its histogram (geometric bin midpoints)."""
    mids = np.sqrt(np.maximum(HIST_EDGES[:-1], 1e-4) * HIST_EDGES[1:])
    cum = np.cumsum(hist_FH, 1)
    tot = cum[:, -1:]
    out = np.zeros((hist_FH.shape[0], len(qs)), np.float32)
    for j, q in enumerate(qs):
        b = (cum < q * tot).sum(1)
        out[:, j] = np.where(tot[:, 0] > 0, mids[np.minimum(b, len(mids) - 1)], 0.0)
    return out


def _concept_table(conc, concept_names, concept_source, n_res_C, n_dom_C, coverage_C):
    tp, dom, act = conc["tp"], conc["dom"], conc["act"]
    C, F, T = tp.shape
    rows = []
    best = {"concept": np.array([""] * F, dtype=object), "f1": np.zeros(F), "threshold": np.zeros(F),
            "precision": np.zeros(F), "recall": np.zeros(F)}
    for c in range(C):
        a = act[concept_source[c]]  # [F, T]
        eligible = n_dom_C[c] >= MIN_DOMAINS and coverage_C[c] <= MAX_COVERAGE
        prec = tp[c] / np.maximum(a, 1)
        rec_dom = dom[c] / max(n_dom_C[c], 1)
        rec_res = tp[c] / max(n_res_C[c], 1)
        f1 = np.where(prec + rec_dom > 0, 2 * prec * rec_dom / np.maximum(prec + rec_dom, 1e-12), 0.0)
        ff, tt = np.nonzero((tp[c] > 0) & (f1 > 0.01))
        if len(ff):
            rows.append(pd.DataFrame({"feature": ff, "concept": concept_names[c], "threshold": np.asarray(THRESHOLDS)[tt],
                                      "tp_residues": tp[c][ff, tt], "active_residues": a[ff, tt], "hit_domains": dom[c][ff, tt],
                                      "precision": prec[ff, tt], "recall_domain": rec_dom[ff, tt], "recall_residue": rec_res[ff, tt],
                                      "f1": f1[ff, tt]}))
        fbest = f1.max(1)
        tbest = f1.argmax(1)
        better = (fbest > best["f1"]) & eligible
        best["concept"][better] = concept_names[c]
        best["f1"][better] = fbest[better]
        best["threshold"][better] = np.asarray(THRESHOLDS)[tbest[better]]
        best["precision"][better] = prec[better, tbest[better]]
        best["recall"][better] = rec_dom[better, tbest[better]]
    cols = ["feature", "concept", "threshold", "tp_residues", "active_residues", "hit_domains", "precision", "recall_domain", "recall_residue", "f1"]
    df = pd.concat(rows) if rows else pd.DataFrame(columns=cols)
    return df, best


def _feature_map(W_dec_FD: np.ndarray, seed: int, use_umap: bool) -> tuple[np.ndarray, np.ndarray]:
    """2-D map of decoder directions (cosine UMAP) and k-means clusters of the directions."""
    from sklearn.cluster import KMeans

    F = W_dec_FD.shape[0]
    Wn = W_dec_FD / np.maximum(np.linalg.norm(W_dec_FD, axis=1, keepdims=True), 1e-8)
    n_clusters = int(min(40, max(2, F // 64)))
    cluster = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(Wn) if F >= 4 else np.zeros(F, int)
    if use_umap and F >= 8:
        import umap

        xy = umap.UMAP(n_neighbors=min(15, F - 1), min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1).fit_transform(Wn)
    else:  # PCA fallback: the first two principal directions
        X = Wn - Wn.mean(0)
        _, _, Vt = np.linalg.svd(X, full_matrices=False)
        xy = X @ Vt[:2].T
    return np.asarray(xy, np.float32), cluster.astype(np.int32)


def _track_table(cols: dict[str, list], tracks: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """Scalar columns plus the sparse tracks as Arrow list columns (INTEGER[] / DOUBLE[]).

    Arrow keeps each track as a slice of one flat array (4 or 8 bytes a value); the same
    tracks as Python lists in a DataFrame took 32+ bytes a value and set the build's peak
    memory (bench/index_scaling.py).
    """
    lens = np.fromiter((len(p) for p, _ in tracks), np.int64, len(tracks))
    offsets = pa.array(np.r_[0, np.cumsum(lens)].astype(np.int32))
    flat_pos = np.concatenate([p for p, _ in tracks]).astype(np.int32) if tracks else np.zeros(0, np.int32)
    flat_val = np.concatenate([v for _, v in tracks]).astype(np.float64) if tracks else np.zeros(0, np.float64)
    floats = ("max_act", "bin_lo", "bin_hi")
    return pa.table({**{k: pa.array(v, type=pa.float64() if k in floats else pa.int64()) for k, v in cols.items()},
                     "positions": pa.ListArray.from_arrays(offsets, pa.array(flat_pos)),
                     "values": pa.ListArray.from_arrays(offsets, pa.array(flat_val))})


def _top_frame(top: _TopN, spill: _TrackSpill, lo: int, hi: int) -> pa.Table:
    cols: dict[str, list] = {"feature": [], "rank": [], "pidx": [], "max_act": [], "max_pos": []}
    tracks = []
    for f in range(lo, hi):
        ranked = sorted(top.items[f].items(), key=lambda kv: -top.val_FN[f, kv[0]])
        for rank, (slot, (pidx, off, n)) in enumerate(ranked):
            pos, vals = spill.get(off, n)
            for k, v in zip(cols, (f, rank, pidx, float(top.val_FN[f, slot]), int(pos[vals.argmax()]))):
                cols[k].append(v)
            tracks.append((pos, vals))
    return _track_table(cols, tracks)


def _quantile_frame(res: _Reservoir, spill: _TrackSpill, max_F: np.ndarray, n_bins: int, per_bin: int, lo: int, hi: int) -> pa.Table:
    cols: dict[str, list] = {"feature": [], "bin": [], "bin_lo": [], "bin_hi": [], "pidx": [], "max_act": [], "max_pos": []}
    tracks = []
    for f in range(lo, hi):
        slots = res.items[f]
        if not slots or max_F[f] <= 0:
            continue
        by_bin: dict[int, list] = defaultdict(list)
        for pidx, vmax, off, n in slots.values():
            b = min(int(vmax / max_F[f] * n_bins), n_bins - 1)
            by_bin[b].append((pidx, vmax, off, n))
        for b, lst in by_bin.items():
            for pidx, vmax, off, n in sorted(lst, key=lambda x: -x[1])[:per_bin]:
                pos, vals = spill.get(off, n)
                row = (f, b, float(b / n_bins * max_F[f]), float((b + 1) / n_bins * max_F[f]), pidx, vmax, int(pos[vals.argmax()]))
                for k, v in zip(cols, row):
                    cols[k].append(v)
                tracks.append((pos, vals))
    return _track_table(cols, tracks)

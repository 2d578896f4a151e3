"""Feature index build: one streaming pass of a protein set through protein LM + SAE into DuckDB.

Memory is bounded by (features x examples kept) and (features x groups), never by the
number of proteins: per-feature statistics are running sums, top examples are a
running top-N (ties: lower protein index first), quantile examples come from a uniform
sample per feature (the R smallest keyed hashes, independent of processing order), and the
sparse codes of *labelled* proteins go to a temporary CSR file on disk so the concept pass can run once the feature
maxima are known (InterPLM
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..atomic import explain
from ..checkpoint import WEIGHTS, check_compatible, hook_of, load_sae, model_config_of, read_eval
from ..concepts import Labeled, load_all
from ..config import DENSE_FREQ, IndexConfig, auto_batch_tokens, resolve_device
from ..dist import World, barrier, process_group
from ..fasta import SequenceError
from ..plm import ProteinLM, load_plm
from .clusters import (
    GROUPING as CLUSTER_GROUPING,
)
from .clusters import (
    ClusterData,
    ClusterSpill,
    cluster_counts,
    cluster_names,
    cluster_profiles,
    cluster_vectors,
)
from .composition import FiringSpill, composition_counts, composition_enrichment
from .concept_f1 import (
    DETECTOR_PURITY,
    THRESHOLDS,
    aa_codes,
    aa_purity,
    concept_counts,
    concept_layout,
    eligible,
    select,
)
from .concept_f1 import (
    report as concept_report,
)
from .describe import describe, search_text
from .group_stats import length_bin, length_edges, top_group_q, top_groups, usage_frame
from .protein_table import COLUMNS, MEMORY_LIMIT, ProteinTable
from .proteins import IndexBuildError, Item
from .streaming import MAX_LATENTS, CSRWriter, HeapTrim, Reservoir, TopN, TrackSpill
from .tables import FORMAT_VERSION, HIST_EDGES, SCHEMA, feature_map, hist_quantiles, quantile_frame, top_frame

EXAMPLE_BLOCK = 2048  # features per block when the example tables are written


def _ref_stat(sae, which: int, F: int) -> np.ndarray:
    t = sae.display_stats()[which]
    return np.full(F, np.nan) if t is None else t.detach().float().cpu().numpy().astype(np.float64)


def _sweep_stale_scratch(folder: Path) -> None:
    """Remove scratch folders left by an indexer that was killed (kill -9 skips its clean-up):
    their names carry the builder's pid, and a folder whose pid is gone is stale."""
    for d in folder.glob("esmsae_index_*"):
        parts = d.name.split("_")
        if len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        try:
            os.kill(pid, 0)
            continue  # still running (or someone else's live build)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            continue


@dataclass
class Layout:
    """Names and ids of what the build counts: concepts and their label sources, groupings and
    their groups (all fixed by the protein set before the pass)."""

    concept_names: list[str]
    concept_ids: dict[str, int]
    source_names: list[str]
    source_ids: dict[str, int]
    concept_source: np.ndarray  # [C] source id of each concept
    groupings: list[str]
    group_names: dict[str, list[str]]
    group_ids: dict[str, dict[str, int]]
    length_edges: np.ndarray  # inner edges of the protein-length bins the group test stratifies by

    @classmethod
    def of(cls, table: ProteinTable, length_bins: int = 1) -> "Layout":
        labs = [lab for v in table.labels.values() for lab in v]
        source_of = {c: lab.source for lab in labs for c in lab.spans}  # concept names carry their source
        concept_names = sorted(source_of)
        source_names = sorted({lab.source for lab in labs})
        source_ids = {s: i for i, s in enumerate(source_names)}
        group_names = table.group_names()
        groupings = sorted(group_names)
        return cls(concept_names, {c: i for i, c in enumerate(concept_names)}, source_names, source_ids,
                   np.array([source_ids[source_of[c]] for c in concept_names], np.int64), groupings, group_names,
                   {g: {n: i for i, n in enumerate(names)} for g, names in group_names.items()},
                   length_edges(table.grouped_lengths(), length_bins))


@dataclass
class Stream:
    """Everything the streaming pass accumulates; its size depends on the features (and groups),
    never on the number of proteins."""

    fire_res_F: np.ndarray
    fire_prot_F: np.ndarray
    sum_F: np.ndarray
    max_F: np.ndarray
    hist_FH: np.ndarray
    top: TopN
    res: Reservoir
    n_fire_G: dict[str, np.ndarray]  # grouping -> [groups, length bins, F] proteins counted for the feature
    sum_max_G: dict[str, np.ndarray]  # grouping -> [groups, F] sum of per-protein max activations
    aa_FA: np.ndarray = None  # [F, 20] firing residues per amino acid (the amino-acid control)
    n_res_A: np.ndarray = None  # [20] indexed residues per amino acid
    ends_F2: np.ndarray = None  # [F, 2] firing residues in the first / last 10% of their protein (position profile)
    firing: FiringSpill | None = None  # per grouped protein: composition and counted features (the composition control)
    clusters: ClusterSpill | None = (
        None  # per clustered protein: pooled LM vector and counted features (embedding clusters)
    )
    cluster_sources: tuple = ()  # only proteins of these sources are clustered (empty: all)
    n_res: int = 0
    last_pairs: list = field(default_factory=list)
    skipped_model: list[str] = field(default_factory=list)
    struct_rows: list[tuple] = field(default_factory=list)

    @classmethod
    def empty(cls, F: int, cfg: IndexConfig, layout: Layout) -> "Stream":
        B = len(layout.length_edges) + 1
        shape = {g: (len(layout.group_names[g]), F) for g in layout.groupings}
        return cls(
            np.zeros(F, np.int64),
            np.zeros(F, np.int64),
            np.zeros(F, np.float64),
            np.zeros(F, np.float32),
            np.zeros((F, len(HIST_EDGES) - 1), np.int64),
            TopN(F, cfg.top_n),
            Reservoir(F, cfg.reservoir, cfg.seed),
            {g: np.zeros((G, B, F), np.int64) for g, (G, F) in shape.items()},
            {g: np.zeros(sh, np.float64) for g, sh in shape.items()},
            np.zeros((F, 20), np.int64),
            np.zeros(20, np.int64),
            np.zeros((F, 2), np.int64),
        )


def build_index(
    cfg: IndexConfig, plm: ProteinLM | None = None, labelled: list[Labeled] | None = None, progress: bool = True
) -> Path:
    """Build the DuckDB feature index of ``cfg.sae`` over a protein set; returns its path.
    ``labelled``: the label records to match (default: those under ``cfg.concepts``).

    Phases: set-up (model, SAE, protein set), the streaming pass, then the feature, concept and
    group tables from what it accumulated, the example tables, and the meta table; all into
    ``<out>.tmp``, renamed over ``out`` at the end.

    Under ``torchrun`` the batches of the one-process plan (length-sorted) are dealt out whole,
    batch b to rank b mod W, so every protein is embedded in the same padded batch as in one
    process; counts and histograms are all-reduced (sums, maxima), concept counts are taken
    after the global maxima, and each rank's top and sampled examples (with their tracks) and
    protein counts go through ``<out>.parts/`` to rank 0, the one writer of the ``.duckdb``.
    The protein set is a columnar table (``protein_table``) rank 0 writes into ``<out>.parts/``
    and every rank streams its batches from."""
    with process_group(resolve_device(cfg.device)) as w:
        return _build(cfg, plm, labelled, progress, w)


def _build(cfg: IndexConfig, plm, labelled, progress: bool, w: World) -> Path:
    t0 = time.time()
    out = Path(cfg.out)
    sae, meta, plm, hook = _set_up(cfg, plm, w)
    parts = out.with_name(out.name + ".parts")
    if w.main:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir()
        # before any rank makes its scratch folder: on several nodes another node's pid looks dead here
        _sweep_stale_scratch(out.parent)
        try:
            table = ProteinTable.build(
                cfg,
                load_all(Path(cfg.concepts)) if labelled is None and cfg.concepts else labelled or [],
                parts / "proteins",
            )
            if not table.n:
                raise IndexBuildError("the protein set is empty (check --fasta / --concepts --add-labelled)")
        except BaseException:
            shutil.rmtree(parts, ignore_errors=True)
            raise
    barrier()
    if not w.main:
        table = ProteinTable.open(parts / "proteins")
    layout = Layout.of(table, cfg.length_bins)
    tmp_db = out.with_name(out.name + ".tmp")
    if w.main:
        for p in (tmp_db, Path(str(tmp_db) + ".wal")):
            p.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp_db)) if w.main else None  # rank 0 writes the index file
    scratch = Path(tempfile.mkdtemp(prefix=f"esmsae_index_{os.getpid()}_", dir=out.parent))
    csr = CSRWriter(scratch)
    spill = TrackSpill(scratch)
    firing = FiringSpill(scratch, list(layout.groupings)) if layout.groupings else None
    clus = ClusterSpill(scratch, plm.d_model) if cfg.cluster_proteins else None
    if os.name == "posix":
        # the scratch files are used only through their open handles: unlinked now, the disk space
        # is freed when the handles close, even after a kill -9 (no scratch folder is left behind)
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        st, done = _stream(cfg, plm, sae, hook, table, layout, csr, spill, progress, w, firing, clus)
        halves = _concept_halves(csr, table.labelled_items(), layout, st, w)
        comp = _composition_counts(st, layout, w)
        cdata = _gather_clusters(clus, parts, w) if clus is not None else None
        if w.distributed:
            done = _merge_ranks(st, done, spill, parts, w)
        if not w.main:
            return out
        n_done = _write_proteins(con, table, done)
        concepts_df, f1_df, best, aa = _concept_frames(halves, layout, st)
        groups_df, usage, (top_group, top_q) = _group_frames(cfg, table, layout, st, comp)
        if cdata is not None:
            groups_df, usage = _cluster_grouping(cfg, layout, st, cdata, groups_df, usage)
        features = _feature_frame(cfg, sae, st, n_done, best, aa, top_group)
        features = _with_descriptions(features, table, st, top_q)
        if cdata is not None:
            info = table.columns(cdata.pidx.tolist(), ("length", "kingdom", "organism", "description")).reindex(
                cdata.pidx
            )
            _table(
                con,
                "cluster_profiles",
                cluster_profiles(
                    cdata.labels, info, usage[usage.grouping == CLUSTER_GROUPING], features, cfg.cluster_proteins
                ),
            )
        spill.finish()
        _write_tables(con, cfg, st, spill, features, concepts_df, f1_df, groups_df, usage)
        _write_meta(con, cfg, meta, plm, hook, sae, st, n_done, table.report, t0, w.size)
        con.execute("CHECKPOINT")
        con.close()
        os.replace(tmp_db, out)
    except BaseException as e:
        try:
            if con is not None:
                con.close()
        except Exception:
            pass
        if w.main:
            tmp_db.unlink(missing_ok=True)
            Path(str(tmp_db) + ".wal").unlink(missing_ok=True)
        if isinstance(e, (OSError, duckdb.IOException)) and not isinstance(e, FileNotFoundError):
            raise explain(out, e, "feature index (the previous index, if any, is untouched)") from e
        raise
    finally:
        spill.fh.close()
        if firing is not None:
            firing.close()
        if clus is not None:
            clus.close()
        csr.release()
        shutil.rmtree(scratch, ignore_errors=True)
        if w.main:
            shutil.rmtree(parts, ignore_errors=True)
    return out


def _reduce_stream(st: "Stream") -> None:
    """All-reduce the running statistics in place: counts and sums add, maxima take the max.
    Integer sums are exact; float64 sums change only in their last bits (summation order)."""
    from ..dist import all_reduce_

    arrays = [st.fire_res_F, st.fire_prot_F, st.hist_FH, st.aa_FA, st.n_res_A, st.ends_F2, st.sum_F,
              *st.n_fire_G.values(), *st.sum_max_G.values()]
    for a in arrays:
        all_reduce_(torch.from_numpy(a), "sum")  # numpy and torch share the memory
    all_reduce_(torch.from_numpy(st.max_F), "max")
    st.n_res = int(all_reduce_(torch.tensor([st.n_res], dtype=torch.int64), "sum")[0])


def _merge_ranks(st: "Stream", done: np.ndarray, spill: TrackSpill, parts: Path, w: World) -> np.ndarray | None:
    """Every rank's kept examples (top and sampled, with tracks), indexed proteins (pidx, features
    active), structure tracks and skipped records to rank 0, through ``parts/``; rank 0 returns
    all indexed proteins. The top-N and the sample are order-free
    (see streaming), so offering the other ranks' candidates to rank 0's gives the one-process
    result."""
    import pickle

    if not w.main:
        spill.finish()
        def track(off: int, n: int) -> tuple[np.ndarray, np.ndarray]:  # copies out of the memory-mapped spill
            pos, vals = spill.get(off, n)
            return np.array(pos), np.array(vals)

        # float32 values carried as float64 (exact), hash keys as Python ints
        top = [(f, float(st.top.val_FN[f, slot]), pidx, *track(off, n))
               for f in range(len(st.top.items)) for slot, (pidx, off, n) in st.top.items[f].items()]
        res = [(f, int(st.res.key_FR[f, slot]), pidx, vmax, *track(off, n))
               for f in range(len(st.res.items)) for slot, (pidx, vmax, off, n) in st.res.items[f].items()]
        np.save(parts / f"done-rank{w.rank}.npy", done)
        tmp = parts / f"examples-rank{w.rank}.pkl.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump({"top": top, "res": res, "struct": st.struct_rows, "skipped": st.skipped_model}, fh)
        os.replace(tmp, parts / f"examples-rank{w.rank}.pkl")
    barrier()
    if not w.main:
        return None
    all_done = [done]
    for r in range(1, w.size):
        all_done.append(np.load(parts / f"done-rank{r}.npy"))
        with open(parts / f"examples-rank{r}.pkl", "rb") as fh:
            got = pickle.load(fh)
        for f, val, pidx, pos, vals in got["top"]:
            st.top.offer_one(f, val, pidx, lambda pos=pos, vals=vals: spill.put(pos, vals))
        for f, key, pidx, vmax, pos, vals in got["res"]:
            st.res.offer_one(f, np.uint64(key), pidx, vmax, lambda pos=pos, vals=vals: spill.put(pos, vals))
        st.struct_rows.extend(got["struct"])
        st.skipped_model.extend(got["skipped"])
    return np.concatenate(all_done)


def _set_up(cfg: IndexConfig, plm: ProteinLM | None, w: World = World()):
    """SAE, model (checked against each other) and hook."""
    if not cfg.out:
        raise IndexBuildError("IndexConfig.out: give the index file to write")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = w.device(resolve_device(cfg.device))
    sae = load_sae(cfg.sae, device=device)
    meta = sae.meta
    if plm is None:
        mcfg = model_config_of(meta, cfg.model)
        mcfg.device = device
        plm = load_plm(mcfg)
    sae = sae.to(plm.device)  # the SAE runs where the protein LM runs
    sae.set_encode_dtype(cfg.encode_dtype)
    check_compatible(meta, plm, strict_name=not cfg.model)
    hook = hook_of(meta)
    plm.check_hook(hook)
    if sae.cfg.n_latents > MAX_LATENTS:
        raise IndexBuildError(
            f"the SAE has {sae.cfg.n_latents} latents; the index packs (residue, latent) pairs in 20 bits of latent id,"
            f" so at most {MAX_LATENTS} latents"
        )
    return sae, meta, plm, hook


def batch_plan(length_S: np.ndarray, batch_tokens: int, max_residues: int) -> np.ndarray:
    """The one-process plan over proteins sorted by length (little padding): the batch of each,
    cut at most ``batch_tokens`` padded tokens. Ranks take whole batches of it (b mod W)."""
    cost_S = (
        np.minimum(np.asarray(length_S, np.int64), max_residues) + 2
    )  # nondecreasing: the last protein sets the padding
    batch_S = np.zeros(len(cost_S), np.int64)
    b = n = 0
    for lo in range(0, len(cost_S), 1 << 20):  # Python ints a chunk at a time: 10 M at once are 0.4 GB
        out = []
        for c in cost_S[lo:lo + (1 << 20)].tolist():
            if n and (n + 1) * c > batch_tokens:
                b, n = b + 1, 0
            out.append(b)
            n += 1
        batch_S[lo:lo + len(out)] = out
    return batch_S


def _batches(table: ProteinTable, keep: np.ndarray, batch_S: np.ndarray) -> Iterator[list[Item]]:
    """This rank's batches, streamed from the length-sorted protein table."""
    batch: list[Item] = []
    cur = -1
    mine_K = batch_S[keep]
    for k, it in enumerate(table.items(keep)):
        b = int(mine_K[k])
        if b != cur and batch:
            yield batch
            batch = []
        cur = b
        batch.append(it)
    if batch:
        yield batch


def _stream(
    cfg,
    plm,
    sae,
    hook,
    table: ProteinTable,
    layout: Layout,
    csr: CSRWriter,
    spill: TrackSpill,
    progress: bool,
    w: World = World(),
    firing: FiringSpill | None = None,
    clusters: ClusterSpill | None = None,
) -> tuple[Stream, np.ndarray]:
    """The one pass of every protein (of this rank's batches) through model + SAE; under torchrun
    the running statistics are then all-reduced, so every rank holds the global ones. Returns them
    and this rank's indexed proteins as (pidx, features active) rows."""
    st = Stream.empty(sae.cfg.n_latents, cfg, layout)
    st.firing = firing
    st.clusters, st.cluster_sources = clusters, tuple(cfg.group_sources)
    batch_tokens = cfg.batch_tokens or auto_batch_tokens(str(plm.device), plm.family)
    trim = HeapTrim()
    length_S = table.lengths()
    batch_S = batch_plan(length_S, batch_tokens, plm.max_residues)
    keep = batch_S % w.size == w.rank
    bar = tqdm(total=int(length_S[keep].sum()), desc="index" if not w.distributed else f"index rank {w.rank}",
               unit="res", disable=not progress, unit_scale=True)
    done: list[tuple[int, int]] = []
    for batch in _batches(table, keep, batch_S):
        seqs = [it.sequence for it in batch]
        try:
            acts = [a[hook.name] for a in plm.embed(seqs, [hook])]
        except SequenceError as e:
            if cfg.on_invalid == "error":
                raise
            st.skipped_model.append(str(e))
            continue
        n_active = _add_batch(st, sae, batch, acts, layout, csr, spill, cfg.group_statistic, cfg.pooled_k)
        if st.clusters is not None:
            _add_cluster_rows(st, batch, acts, layout, n_active)
        done.extend((it.pidx, n) for it, n in zip(batch, n_active))
        trim()
        bar.update(sum(len(q) for q in seqs))
    bar.close()
    csr.close()
    if w.distributed:
        _reduce_stream(st)
    return st, np.array(done, np.int64).reshape(-1, 2)


def _add_cluster_rows(
    st: Stream, batch: list[Item], acts: list[torch.Tensor], layout: Layout, n_active: list[int]
) -> None:
    """Each clustered protein's mean-pooled LM vector and the features counted for it (the last batch's
    pairs, kept by _add_batch) into the cluster spill."""
    pairs = st.last_pairs
    for j, it in enumerate(batch):
        if st.cluster_sources and not set(it.source.split(",")) & set(st.cluster_sources):
            continue
        a = aa_codes(it.sequence)
        feats, vmax = pairs[j]
        st.clusters.put(
            it.pidx,
            length_bin(len(it.sequence), layout.length_edges),
            np.bincount(a[a >= 0], minlength=20),
            acts[j].float().mean(0).cpu().numpy(),
            feats,
            vmax,
        )


def _gather_clusters(clus: ClusterSpill, parts: Path, w: World):
    """All ranks' clustered proteins on rank 0 (through ``parts/``), in pidx order; None on other ranks."""
    data = clus.collect()
    if not w.distributed:
        return data
    if not w.main:
        data.save(parts / f"clusters-rank{w.rank}.npz")
    barrier()
    if not w.main:
        return None
    return ClusterData.merge([data] + [ClusterData.load(parts / f"clusters-rank{r}.npz") for r in range(1, w.size)])


def _cluster_grouping(
    cfg: IndexConfig, layout: Layout, st: Stream, cdata, groups_df: pd.DataFrame, usage: pd.DataFrame
):
    """Cluster the pooled vectors, then the grouping 'embedding cluster' with the same tests as every grouping."""
    K = cfg.cluster_proteins
    cdata.labels = cluster_vectors(cdata.vec, K, cfg.seed)
    F = len(st.fire_prot_F)
    B = len(layout.length_edges) + 1
    n_fire, smax, n_prot = cluster_counts(cdata, K, B, F)
    names = cluster_names(K)
    frame, enr = usage_frame(names, n_fire, smax, n_prot, cfg.group_test, cfg.min_group_size)
    top_aa_F = st.aa_FA.argmax(1)
    freq_A = st.n_res_A / max(int(st.n_res_A.sum()), 1)
    (cfire, cprot), = composition_counts(cdata, top_aa_F, freq_A, [K], B)
    frame = _with_composition(
        frame,
        enr,
        {"top_aa_F": top_aa_F, "counts": {CLUSTER_GROUPING: (cfire, cprot)}},
        CLUSTER_GROUPING,
        cfg.min_group_size,
    )
    rows = pd.DataFrame(
        [(CLUSTER_GROUPING, nm, int(n_prot[i].sum()), bool(enr["tested"][i])) for i, nm in enumerate(names)],
        columns=["grouping", "grp", "n_proteins", "tested"],
    )
    return (pd.concat([groups_df, rows], ignore_index=True),
            pd.concat([usage, frame.assign(grouping=CLUSTER_GROUPING)[USAGE_COLUMNS]], ignore_index=True))


def _write_proteins(con, table: ProteinTable, done: np.ndarray) -> int:
    """The index's proteins table: the protein table's rows of the indexed proteins, in pidx order,
    with how many features fire on each; returns their number."""
    con.register("_done", pd.DataFrame({"pidx": done[:, 0], "n_active_features": done[:, 1]}))
    cols = ", ".join(f"p.{c}" for c in COLUMNS)
    con.execute(f"CREATE TABLE proteins ({SCHEMA['proteins']})")
    # DuckDB's default buffer (80% of RAM) let this sort take 9.3 GB at 10 M proteins; with 2 GB it
    # spills and takes 2.7 GB, no slower (bench/protein_table.py)
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(
        f"INSERT INTO proteins SELECT {cols}, d.n_active_features FROM read_parquet('{table.parquet}') p JOIN _done d"
        " USING (pidx) ORDER BY p.pidx"
    )
    con.execute("RESET memory_limit")
    con.unregister("_done")
    return len(done)


def _add_counts(target: np.ndarray, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
    """``target.flat[key] += 1`` (or ``+= weight``) for every key, repeats included. Sized by the
    keys present, not by the target: a bincount with minlength = features x histogram bins moved
    13 MB a batch at 10,240 latents."""
    if not len(keys):
        return
    u, inv = np.unique(keys, return_inverse=True)
    # a view of the target: targets are contiguous arrays or 1-D column views (ends_F2[:, j])
    flat = target.reshape(-1)
    flat[u] += np.bincount(inv, weights=weights).astype(flat.dtype, copy=False)


def _add_batch(st: Stream, sae, batch: list[Item], acts: list[torch.Tensor], layout: Layout, csr: CSRWriter,
               spill: TrackSpill, group_statistic: str = "fires", pooled_k: int = 10) -> list[int]:
    """One batch of proteins' sparse codes into the running statistics; returns how many features
    fire on each protein. The SAE encodes the whole batch at once and every per-feature count is
    one bincount over the batch's (residue, feature) pairs: per-protein encodes and ``np.add.at``
    left the index at 45% LM time (bench/index_scaling.py). Only the example offers, labelled
    proteins' codes and group counts go protein by protein."""
    F = len(st.fire_prot_F)
    H = st.hist_FH.shape[1]
    len_P = np.array([a.shape[0] for a in acts], np.int64)
    off_P = np.r_[0, np.cumsum(len_P)]
    with torch.no_grad():
        lat = sae.encode(torch.cat(acts).to(sae.W_dec.device))
    acts_TK, idx_TK = lat.acts_BK.float().cpu().numpy(), lat.idx_BK.cpu().numpy()
    nz = acts_TK > 0
    t_R = np.nonzero(nz)[0].astype(np.int64)  # token of the batch (sorted)
    f_R = idx_TK[nz].astype(np.int64)
    v_R = acts_TK[nz]
    p_R = np.searchsorted(off_P, t_R, side="right") - 1  # protein of the batch
    r_R = t_R - off_P[p_R]  # residue within its protein
    # per-feature counts over the batch
    st.n_res += int(off_P[-1])
    aa_T = (
        np.concatenate([aa_codes(it.sequence)[:n] for it, n in zip(batch, len_P)])
        if len(batch)
        else np.zeros(0, np.int64)
    )
    st.n_res_A += np.bincount(aa_T[aa_T >= 0], minlength=20)
    a_R = aa_T[t_R]
    ok = a_R >= 0
    _add_counts(st.aa_FA, f_R[ok] * 20 + a_R[ok])
    L_R = len_P[p_R]
    _add_counts(st.ends_F2[:, 0], f_R[r_R < 0.1 * L_R])
    _add_counts(st.ends_F2[:, 1], f_R[r_R >= 0.9 * L_R])
    _add_counts(st.fire_res_F, f_R)
    _add_counts(st.sum_F, f_R, v_R.astype(np.float64))
    hb = np.clip(np.searchsorted(HIST_EDGES, v_R, side="right") - 1, 0, len(HIST_EDGES) - 2)
    _add_counts(st.hist_FH, f_R * H + hb)
    # (protein, feature) pairs: max, residue count and the track of each
    order = np.lexsort((r_R, f_R, p_R))
    ps, fs, rs, vs = p_R[order], f_R[order], r_R[order], v_R[order]
    key = ps * F + fs
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(key)]
    pair_p, pair_f = ps[starts], fs[starts]
    pair_v = np.maximum.reduceat(vs, starts) if len(starts) else np.zeros(0, np.float32)
    _add_counts(st.fire_prot_F, pair_f)
    np.maximum.at(st.max_F, pair_f, pair_v)
    pair_bounds = np.searchsorted(pair_p, np.arange(len(batch) + 1))
    res_bounds = np.searchsorted(p_R, np.arange(len(batch) + 1))
    n_active = np.diff(pair_bounds).tolist()
    # example offers for the whole batch; a pair's track goes to disk once, when first kept
    pidx_B = np.array([it.pidx for it in batch], np.int64)
    pair_pidx = pidx_B[pair_p] if len(pair_p) else np.zeros(0, np.int64)
    pair_off = np.full(len(pair_p), -1, np.int64)
    pair_n = ends - starts

    def tracks(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = np.unique(q[pair_off[q] < 0])
        if len(new):
            pair_off[new] = spill.put_many(starts[new], ends[new], rs, vs)
        return pair_off[q], pair_n[q]

    st.top.offer_batch(pair_f, pair_v, pair_pidx, tracks)
    st.res.offer_batch(pair_f, pair_v, pair_pidx, tracks)
    st.last_pairs = []  # per protein: the features counted for groupings and their per-protein max (embedding clusters)
    for j, it in enumerate(batch):
        i = it.pidx
        lo, hi = pair_bounds[j], pair_bounds[j + 1]
        feats, vmax = pair_f[lo:hi], pair_v[lo:hi]
        counted, counted_max = feats, vmax
        if group_statistic == "pooled_topk" and (
            it.groups or st.clusters is not None
        ):  # esm-sae: the top-k of the mean-pooled code
            a, b = res_bounds[j], res_bounds[j + 1]
            pooled = np.bincount(f_R[a:b], weights=v_R[a:b], minlength=F)[feats] / max(int(len_P[j]), 1)
            keep = np.argsort(-pooled, kind="stable")[:pooled_k]
            counted, counted_max = feats[keep], vmax[keep]
        st.last_pairs.append((counted, counted_max))
        if it.groups:
            gb = length_bin(len(it.sequence), layout.length_edges)
            for g, grp in it.groups.items():
                gi = layout.group_ids[g][grp]
                st.n_fire_G[g][gi, gb, counted] += 1
                st.sum_max_G[g][gi, feats] += vmax
            if st.firing is not None:
                a = aa_codes(it.sequence)
                st.firing.put(
                    gb,
                    [layout.group_ids[g][it.groups[g]] if g in it.groups else -1 for g in layout.groupings],
                    np.bincount(a[a >= 0], minlength=20),
                    counted,
                )
        if it.labels:
            a, b = res_bounds[j], res_bounds[j + 1]
            csr.add(i, r_R[a:b], f_R[a:b], v_R[a:b])
        if it.structure:  # full tracks of proteins with a structure, to colour it by any feature
            st.struct_rows.extend((i, int(f), float(m), rs[starts[q]:ends[q]].astype(np.int32).tolist(),
                                   vs[starts[q]:ends[q]].astype(np.float32).tolist())
                                  for f, m, q in zip(feats, vmax, range(lo, hi)))
    return n_active


def _concept_halves(csr: CSRWriter, items: dict[int, Item], layout: Layout, st: "Stream", w: World = World()):
    """Concept counts (valid and test halves) of this rank's labelled proteins, thresholded at the
    global feature maxima, then summed over ranks (integer counts: exact)."""
    lay = concept_layout(layout.concept_names, layout.concept_source)
    halves = concept_counts(csr, items, st.max_F, layout.concept_ids, layout.source_ids, lay)
    if w.distributed:
        from dataclasses import fields

        from ..dist import all_reduce_

        for h in halves:
            for fld in fields(h):
                a = getattr(h, fld.name)
                assert a.flags.c_contiguous  # reduced in place through a shared torch view
                all_reduce_(torch.from_numpy(a), "sum")
    return halves


def _concept_frames(halves, layout: Layout, st: "Stream"):
    """The concepts table, concept F1 per (feature, concept) chosen on valid and reported on test
    proteins, each feature's best concept and its amino-acid control (``concept_f1``)."""
    lay = concept_layout(layout.concept_names, layout.concept_source)
    ok = eligible(halves, lay)
    sel = select(halves[0], lay, ok)
    aa = aa_purity(st.aa_FA, st.n_res_A)
    f1_df, per_c, best = concept_report(halves, lay, sel, ok, aa["aa_purity"])
    v, t = halves
    concepts_df = pd.DataFrame(
        {
            "concept": layout.concept_names,
            "source": [layout.source_names[s] for s in layout.concept_source],
            "n_proteins": v.n_prot + t.n_prot,
            "n_residues": v.n_res + t.n_res,
            "n_domains": v.n_dom + t.n_dom,
            "n_valid_proteins": v.n_prot,
            "n_test_proteins": t.n_prot,
        }
    )
    # always the full column set: an index built without --concepts has an empty table that pages still query,
    # with typed columns (an empty object column would reach DuckDB as NULL / DOUBLE and break text comparisons)
    concepts_df = pd.concat([concepts_df, per_c], axis=1)
    if concepts_df.empty:
        text = {"concept", "source", "recall_over", "aa_rule", "local_rule", "best_baseline"} | {
            c for c in concepts_df if c.endswith("_rule")
        }
        concepts_df = concepts_df.astype(
            {
                c: "string" if c in text else bool if c in ("catch_all", "eligible") else "float64"
                for c in concepts_df.columns
            }
        )
    return concepts_df, f1_df, best, aa


USAGE_COLUMNS = [
    "grouping",
    "grp",
    "feature",
    "n_proteins",
    "n_fire",
    "frac",
    "mean_act",
    "log_odds",
    "p",
    "q",
    "tested",
    "log_odds_composition",
    "q_composition",
    "composition_driven",
]


def _composition_counts(st: Stream, layout: Layout, w: World = World()) -> dict | None:
    """Length x composition strata counts of every grouping (the composition control), summed over
    ranks; the feature's top amino acid is taken from the global amino-acid counts."""
    if st.firing is None:
        return None
    top_aa_F = st.aa_FA.argmax(1)
    freq_A = st.n_res_A / max(int(st.n_res_A.sum()), 1)
    n_groups = [len(layout.group_names[g]) for g in layout.groupings]
    counts = composition_counts(st.firing, top_aa_F, freq_A, n_groups, len(layout.length_edges) + 1)
    if w.distributed:
        from ..dist import all_reduce_

        for fire, prot in counts:
            all_reduce_(torch.from_numpy(fire), "sum")
            all_reduce_(torch.from_numpy(prot), "sum")
    return {"top_aa_F": top_aa_F, "counts": dict(zip(layout.groupings, counts))}


def _group_frames(cfg: IndexConfig, table: ProteinTable, layout: Layout, st: Stream, comp: dict | None = None):
    """The groups table, the group x feature usage table (length-stratified test by default) and
    each feature's top group (only where enriched at q < 0.05, see ``group_stats``)."""
    F = len(st.fire_prot_F)
    group_rows, usage_frames = [], []
    top_group = np.array([""] * F, dtype=object)
    top_q = np.full(F, np.nan)
    members_GB = table.member_counts(layout.group_ids, layout.length_edges)
    for g in layout.groupings:
        n_prot_GB = members_GB[g]
        frame, enr = usage_frame(
            layout.group_names[g], st.n_fire_G[g], st.sum_max_G[g], n_prot_GB, cfg.group_test, cfg.min_group_size
        )
        frame = _with_composition(frame, enr, comp, g, cfg.min_group_size)
        usage_frames.append(frame.assign(grouping=g)[USAGE_COLUMNS])
        group_rows += [
            (g, name, int(n_prot_GB[gi].sum()), bool(enr["tested"][gi]))
            for gi, name in enumerate(layout.group_names[g])
        ]
        if g == "kingdom" or (g == layout.groupings[0] and "kingdom" not in layout.groupings):
            top_group = top_groups(layout.group_names[g], enr, st.fire_prot_F)
            top_q = top_group_q(layout.group_names[g], enr, top_group)
    usage = pd.concat(usage_frames) if usage_frames else pd.DataFrame(columns=USAGE_COLUMNS)
    return pd.DataFrame(group_rows, columns=["grouping", "grp", "n_proteins", "tested"]), usage, (top_group, top_q)


def _with_composition(frame: pd.DataFrame, enr: dict, comp: dict | None, g: str, min_group_size: int) -> pd.DataFrame:
    """The composition-stratified test beside the length-only one: an enrichment (q < 0.05, log odds > 0)
    that the length x composition CMH no longer finds is composition-driven."""
    if comp is None:
        return frame.assign(log_odds_composition=np.nan, q_composition=np.nan, composition_driven=False)
    fire, prot = comp["counts"][g]
    ce = composition_enrichment(fire, prot, comp["top_aa_F"], min_group_size)
    sig = (enr["q"] < 0.05) & (enr["log_odds"] > 0)
    sig_c = (ce["q"] < 0.05) & (ce["log_odds"] > 0)
    return frame.assign(
        log_odds_composition=ce["log_odds"].ravel(),
        q_composition=ce["q"].ravel(),
        composition_driven=(sig & ~sig_c).ravel(),
    )


def _feature_frame(
    cfg: IndexConfig, sae, st: Stream, n_done: int, best: dict, aa: dict, top_group: np.ndarray
) -> pd.DataFrame:
    F = sae.cfg.n_latents
    freq_res = st.fire_res_F / max(st.n_res, 1)
    qs = hist_quantiles(st.hist_FH, (0.5, 0.9, 0.99))
    umap_xy, cluster = feature_map(sae.W_dec.detach().float().cpu().numpy(), cfg.seed, cfg.umap)
    return pd.DataFrame(
        {
            "feature": np.arange(F),
            "freq_residue": freq_res,
            "freq_protein": st.fire_prot_F / max(n_done, 1),
            "n_proteins": st.fire_prot_F,
            "n_residues": st.fire_res_F,
            "max_act": st.max_F,
            "mean_act": np.where(st.fire_res_F > 0, st.sum_F / np.maximum(st.fire_res_F, 1), 0.0),
            "q50": qs[:, 0],
            "q90": qs[:, 1],
            "q99": qs[:, 2],
            "dead": st.fire_res_F == 0,
            "dense": freq_res > DENSE_FREQ,
            "idf": np.log(max(n_done, 1) / np.maximum(st.fire_prot_F, 1)),
            # best concept: chosen on valid proteins; F1, precision, recall on held-out test proteins
            "best_concept": best["concept"],
            "best_f1": best["f1"],
            "best_f1_valid": best["f1_valid"],
            "best_threshold": best["threshold"],
            "best_precision": best["precision"],
            "best_recall": best["recall"],
            "best_trivial_f1": best["trivial_f1"],
            "best_aa_rule_f1": best["aa_rule_f1"],
            "best_local_rule_f1": best["local_rule_f1"],
            "matches_concept": best["match"],
            # the amino-acid control: top residue type, share of firing on it, F1 for "is that residue"
            "aa_top": aa["aa_top"],
            "aa_purity": aa["aa_purity"],
            "aa_f1": aa["aa_f1"],
            "residue_detector": aa["aa_purity"] >= DETECTOR_PURITY,
            # automatic label: a concept only where the feature beats both baselines on test proteins
            "label": np.where(
                best["match"],
                best["concept"],
                np.where(aa["aa_purity"] >= DETECTOR_PURITY, np.char.add("Amino acid: ", aa["aa_top"].astype(str)), ""),
            ),
            "top_group": top_group,
            "cluster": cluster,
            "umap_x": umap_xy[:, 0],
            "umap_y": umap_xy[:, 1],
            # reference display statistics shipped with the SAE (NaN when it has none)
            "ref_max": _ref_stat(sae, 0, F),
            "ref_idf": _ref_stat(sae, 1, F),
        }
    )


def _with_descriptions(features: pd.DataFrame, table: ProteinTable, st: Stream, top_q: np.ndarray) -> pd.DataFrame:
    """Grounded descriptions and the search text (``describe``), from this index's own evidence."""
    ranked = {f: [it[0] for _, it in st.top.ranked(f)[:10]] for f in range(len(st.top.items))}
    info = table.columns([p for v in ranked.values() for p in v], ("id", "description"))
    # plain dicts: 10 x F lookups through DataFrame.at took 3.4 s at 10,240 features
    ids, names = info["id"].to_dict(), info["description"].to_dict()
    top_ids = {f: [ids[p] for p in v] for f, v in ranked.items()}
    top_names = {f: [names[p] for p in v] for f, v in ranked.items()}
    features = features.assign(n_nterm=st.ends_F2[:, 0], n_cterm=st.ends_F2[:, 1], top_group_q=top_q)
    d = describe(features, top_names, top_q)
    return features.assign(
        description=d["description"].to_numpy(),
        evidence=d["evidence"].to_numpy(),
        search_text=search_text(
            d, features, {f: ids + [n for n in top_names[f] if n] for f, ids in top_ids.items()}
        ).to_numpy(),
    )


def _table(con, name: str, df, order: str = "") -> None:
    con.register(f"_{name}_df", df)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}_df" + (f" ORDER BY {order}" if order else ""))
    con.unregister(f"_{name}_df")


def _write_tables(
    con, cfg: IndexConfig, st: Stream, spill: TrackSpill, features, concepts_df, f1_df, groups_df, usage
) -> None:
    F = len(features)
    _table(con, "features", features)
    hist_f, hist_b = np.nonzero(st.hist_FH)
    _table(
        con,
        "feature_hist",
        pd.DataFrame(
            {
                "feature": hist_f,
                "bin_lo": HIST_EDGES[hist_b],
                "bin_hi": HIST_EDGES[hist_b + 1],
                "count": st.hist_FH[hist_f, hist_b],
            }
        ),
    )
    # written in blocks of features, in feature order (DuckDB keeps insertion order), so the
    # tracks in memory at once are bounded by the block, not by the whole index
    for lo in range(0, F, EXAMPLE_BLOCK):
        hi = min(F, lo + EXAMPLE_BLOCK)
        verb = "CREATE TABLE {} AS" if lo == 0 else "INSERT INTO {}"
        con.register("top_df", top_frame(st.top, spill, lo, hi))
        con.execute(verb.format("top_examples") + " SELECT * FROM top_df ORDER BY feature, rank")
        con.register("q_df", quantile_frame(st.res, spill, st.max_F, cfg.quantile_bins, cfg.per_bin, lo, hi))
        con.execute(verb.format("quantile_examples") + " SELECT * FROM q_df ORDER BY feature, bin, max_act DESC")
        con.unregister("top_df")
        con.unregister("q_df")
    _table(
        con,
        "structure_tracks",
        pd.DataFrame(st.struct_rows, columns=["pidx", "feature", "max_act", "positions", "values"]),
        "feature, max_act DESC",
    )
    _table(con, "concepts", concepts_df)
    _table(con, "concept_f1", f1_df, "feature, f1 DESC")
    _table(con, "groups", groups_df)
    con.register("_usage_df", usage)
    con.execute("CREATE TABLE group_usage AS SELECT * FROM _usage_df WHERE n_fire > 0 ORDER BY grouping, feature")
    con.unregister("_usage_df")


def _write_meta(
    con,
    cfg: IndexConfig,
    meta: dict,
    plm,
    hook,
    sae,
    st: Stream,
    n_done: int,
    report: dict,
    t0: float,
    world_size: int = 1,
) -> None:
    wsha = hashlib.sha256((Path(cfg.sae) / WEIGHTS).read_bytes()).hexdigest()[:16]
    info = {
        "format_version": FORMAT_VERSION,
        "esmsae_version": __version__,
        "sae": str(cfg.sae),
        "sae_sha256": wsha,
        "sae_cfg": meta,
        "eval": read_eval(cfg.sae),
        "model": plm.name,
        "hook": hook.name,
        "layer": hook.layer,
        "site": hook.site,
        "n_latents": sae.cfg.n_latents,
        "d_in": sae.d_in,
        "n_proteins": n_done,
        "n_residues": int(st.n_res),
        "thresholds": list(THRESHOLDS),
        "top_n": cfg.top_n,
        "quantile_bins": cfg.quantile_bins,
        "per_bin": cfg.per_bin,
        "build_seconds": round(time.time() - t0, 1),
        "world_size": world_size,
        "skipped_model": len(st.skipped_model),
        "skipped_examples": st.skipped_model[:20],
        "collect": report,
        "index_config": asdict(cfg),
        "normalisations": {
            "raw": "SAE activation",
            "max": "activation / feature max (0..1)",
            "idf": "activation / feature max x IDF, IDF = log(N proteins / proteins where it fires)",
        },
    }
    con.execute(f"CREATE TABLE meta ({SCHEMA['meta']})")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, default=str)) for k, v in info.items()])

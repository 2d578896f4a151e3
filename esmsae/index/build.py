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

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from esmsae.config import IndexConfig, auto_batch_tokens, resolve_device
from esmsae.core.atomic import explain
from esmsae.core.dist import World, barrier, process_group
from esmsae.core.fasta import SequenceError
from esmsae.index.accumulate import Layout, Stream, _add_batch, _reduce_stream
from esmsae.index.clusters import (
    GROUPING as CLUSTER_GROUPING,
)
from esmsae.index.clusters import (
    ClusterData,
    ClusterSpill,
    cluster_counts,
    cluster_names,
    cluster_profiles,
    cluster_vectors,
)
from esmsae.index.composition import FiringSpill, composition_counts
from esmsae.index.concept_f1 import (
    aa_codes,
)
from esmsae.index.frames import (
    USAGE_COLUMNS,
    _composition_counts,
    _concept_choices,
    _concept_frames,
    _concept_halves,
    _concept_intervals,
    _feature_frame,
    _group_frames,
    _with_composition,
    _with_descriptions,
)
from esmsae.index.group_stats import length_bin, usage_frame
from esmsae.index.label_spans import write_label_spans
from esmsae.index.labels import Labeled, load_all
from esmsae.index.protein_table import ProteinTable
from esmsae.index.proteins import IndexBuildError, Item
from esmsae.index.splits import assign_sides
from esmsae.index.streaming import MAX_LATENTS, CSRWriter, HeapTrim, TrackSpill
from esmsae.index.window_model import WindowModels, fit_window_models
from esmsae.index.write import _table, _write_meta, _write_proteins, _write_tables
from esmsae.lm.plm import ProteinLM, load_plm
from esmsae.published.load import load_sae
from esmsae.sae.checkpoint import check_compatible, hook_of, model_config_of

WINDOWS_FILE = "window_models.parquet"  # rank 0 fits the window baselines, every rank reads them

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


def _split_off_train(labs: list[Labeled], train_fraction: float) -> tuple[list[Labeled], list[Labeled]]:
    """(records to index, train-side records): the train side fits the learned window baselines only
    (``esmsae.index.splits``), so no feature is measured on a protein a baseline was fitted on."""
    if not labs:
        return labs, []
    assign_sides([lab for lab in labs if not lab.split], train_fraction)
    return [lab for lab in labs if lab.split != "train"], [lab for lab in labs if lab.split == "train"]


def _fit_windows(table: ProteinTable, train: list[Labeled], path: Path) -> None:
    """Fit the window models of every concept the index counts (on the train side) into ``path``."""
    labs = [lab for v in table.labels.values() for lab in v]
    concept_source = {c: lab.source for lab in labs for c in lab.spans}
    if train and concept_source:
        fit_window_models(train, concept_source).frame().to_parquet(path)  # the index's window_models rows


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
            labs = load_all(Path(cfg.concepts)) if labelled is None and cfg.concepts else labelled or []
            labs, train = _split_off_train(labs, cfg.baseline_train_fraction)
            table = ProteinTable.build(cfg, labs, parts / "proteins")
            _fit_windows(table, train, parts / WINDOWS_FILE)
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
        wf = parts / WINDOWS_FILE  # every rank reads the models rank 0 fitted
        windows = WindowModels.from_frame(pd.read_parquet(wf)) if wf.exists() else None
        causal = getattr(plm, "objective", "mlm") == "causal"  # UniRep: the match rule may read t + lag
        items = table.labelled_items()
        halves = _concept_halves(csr, items, layout, st, w, windows, causal)
        choices = _concept_choices(halves, layout, st, windows, causal)  # made once, used twice
        ci = _concept_intervals(csr, items, halves, layout, st, windows, choices, w) if items else None
        comp = _composition_counts(st, layout, w)
        cdata = _gather_clusters(clus, parts, w) if clus is not None else None
        if w.distributed:
            done = _merge_ranks(st, done, spill, parts, w)
        if not w.main:
            return out
        n_done = _write_proteins(con, table, done)
        concepts_df, f1_df, best, aa = _concept_frames(halves, layout, st, windows, causal, ci, choices)
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
        write_label_spans(con, table.labels)
        if windows is not None:
            _table(con, "window_models", windows.frame())
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
    """Cluster the pooled vectors into the grouping 'embedding cluster', described but not tested: the clusters
    are made of the same LM states the SAE encodes, so a feature "enriched" in one is expected by construction
    (an audit called the earlier test circular). Usage shares and log odds are kept; p and q are NaN."""
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
    frame = frame.assign(p=np.nan, q=np.nan, q_composition=np.nan, composition_driven=False)  # descriptive only
    rows = pd.DataFrame(
        [(CLUSTER_GROUPING, nm, int(n_prot[i].sum()), bool(enr["tested"][i])) for i, nm in enumerate(names)],
        columns=["grouping", "grp", "n_proteins", "tested"],
    )
    return (pd.concat([groups_df, rows], ignore_index=True),
            pd.concat([usage, frame.assign(grouping=CLUSTER_GROUPING)[USAGE_COLUMNS]], ignore_index=True))



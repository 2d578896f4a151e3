"""The Group comparison page's uploads: a grouping file of the user's (TSV of index ids, or esm-sae's
JSON of sequences) read into groups, and each group's feature usage computed through the inspector's
model + SAE, with the same length-stratified enrichment test as the index."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from esmsae.app.analyze import Analyzer, InputError
from esmsae.index.group_stats import length_bin, length_edges, usage_frame
from esmsae.index.proteins import grouping_json, grouping_tsv

MAX_GROUP_PROTEINS = 500
MIN_GROUP_SIZE = 5  # groups under this many proteins are not tested (as the index's default --min-group-size)


def read_uploaded_grouping(name: str, data: bytes, lookup) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """An uploaded grouping file -> ({group: [(id, sequence)]}, number of unknown ids).

    TSV ``id<TAB>group`` (ids looked up with ``lookup(ids) -> {id: sequence}``, e.g. the index's
    proteins) or JSON ``{group: [[sequence, header], ...]}`` (esm-sae's sampled_sequences.json).
    """
    text = data.decode("utf-8", errors="replace")
    groups: dict[str, list[tuple[str, str]]] = {}
    unknown = 0
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
    except ValueError as e:  # IndexBuildError and SequenceError name the line, group or entry
        raise InputError(str(e)) from e
    if not groups:
        raise InputError(f"{name}: no groups found")
    n = sum(len(v) for v in groups.values())
    if n > MAX_GROUP_PROTEINS:
        raise InputError(f"{name}: {n} proteins; the app computes uploaded groupings for at most {MAX_GROUP_PROTEINS} "
                         f"(pass it to `python -m esmsae index --groups` for more)")
    return groups, unknown


def group_usage(analyzer: Analyzer, groups: dict[str, list[tuple[str, str]]], test: str = "cmh", length_bins: int = 5,
                min_group_size: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """Per group x feature: proteins where it fires, fraction, mean per-protein max, and
    enrichment against the other groups as in the index (length-stratified CMH by default, BH q)."""
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

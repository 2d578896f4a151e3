"""The feature index (DuckDB): one streaming pass of a protein set through protein LM + SAE.

====================  ==========================================================================
``proteins.py``       one protein record, grouping / taxonomy file readers, one label per source
``protein_table.py``  the protein set as a columnar table (DuckDB, Parquet): de-duplicated, ranked reads
``streaming.py``      bounded-memory accumulators: top-N, reservoir, track spill, CSR, heap trim
``concept_f1.py``     concept F1 with baselines, valid/test split and the amino-acid control
``group_stats.py``    group enrichment: log odds, one-sided Fisher, Benjamini-Hochberg
``tables.py``         schema and table writers (no torch: the app's read path imports it)
``build.py``          :func:`build_index`, the build as a sequence of phases
====================  ==========================================================================

Names are re-exported lazily, so importing :mod:`esmsae.index.tables` (the app) does not
import the build side (torch).
"""
from __future__ import annotations

from importlib import import_module

_WHERE = {
    "build_index": "build", "EXAMPLE_BLOCK": "write",
    "Item": "proteins", "IndexBuildError": "proteins", "ProteinTable": "protein_table", "grouping_json": "proteins",
    "grouping_tsv": "proteins", "read_grouping": "proteins",
    "enrichment": "group_stats", "benjamini_hochberg": "group_stats",
    "THRESHOLDS": "concept_f1", "MIN_DOMAINS": "concept_f1", "MIN_RESIDUES": "concept_f1", "MARGIN": "concept_f1",
    "labels_path": "tables", "SCHEMA": "tables", "HIST_EDGES": "tables",
}


def __getattr__(name: str):
    if name == "IndexError_":  # the old name
        name = "IndexBuildError"
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'esmsae.index' has no attribute {name!r}")


__all__ = sorted(_WHERE)

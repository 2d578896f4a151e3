"""Command line: ``esmsae embed|train|evaluate|pipeline|index|import|...`` (or ``python -m esmsae``).

Every option is generated: the pipeline commands' from the config sections (:mod:`esmsae.config`, the
same classes the app's settings page is drawn from), every other command's from its dataclass in
:mod:`esmsae.config.commands`. This module holds the table of commands and no per-option code, so
``--help``, the settings page and docs/cli.md (:func:`usage_markdown`, written by ``python -m esmsae.docs``)
cannot disagree. ``--config
FILE`` loads a JSON file written by ``--save-config FILE`` (options given on the command line
override it).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from esmsae.config import ConfigError, LMTrainConfig, from_dict
from esmsae.config import commands as c
from esmsae.config.fields import add_args, from_args
from esmsae.sae.pipeline import SECTIONS, SKIPS

PROG = "esmsae"


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, the config sections it resolves (with the fields it leaves to
    the command) and the dataclass of its own options."""

    name: str
    help: str
    description: str = ""
    sections: tuple[tuple[str, type, tuple[str, ...]], ...] = ()
    args: tuple[type, ...] = ()


def _pipeline_sections(cmd: str) -> tuple[tuple[str, type, tuple[str, ...]], ...]:
    return tuple((s, SECTIONS[s], skip) for s, skip in SKIPS[cmd].items())


TABLE: tuple[Command, ...] = (
    Command("embed", "stream a FASTA through a protein LM into a sharded activation store (resumable)",
            sections=_pipeline_sections("embed"), args=(c.ConfigFileArgs,)),
    Command("train", "train one SAE per layer of an activation store (resumable: rerun to continue)",
            sections=_pipeline_sections("train"), args=(c.ConfigFileArgs, c.NpyArgs)),
    Command("evaluate", "write the evaluation card eval.json of SAE checkpoint(s) on held-out proteins",
            sections=_pipeline_sections("evaluate"), args=(c.ConfigFileArgs, c.EvaluateArgs)),
    Command("pipeline", "embed -> train -> evaluate in one command",
            sections=_pipeline_sections("pipeline"), args=(c.ConfigFileArgs, c.PipelineArgs)),
    Command("index", "build the DuckDB feature index of an SAE over a protein set (top examples, concepts, groups, "
            "feature map)", sections=_pipeline_sections("index"), args=(c.ConfigFileArgs,)),
    Command("init-model", "build a randomly initialised ESM-2 model (Hugging Face format) from a config folder",
            "Build a randomly initialised ESM-2 model of the architecture in --config-dir, saved in Hugging Face "
            "format.", args=(c.InitModelArgs,)),
    Command("train-lm", "train a small protein LM (masked LM), Hugging Face format",
            "Masked-LM training of a protein LM of the architecture in --config-dir on FASTA files (resumable).",
            sections=(("lm", LMTrainConfig, ("fasta",)),), args=(c.TrainLMArgs,)),
    Command("demo", "build the demo bundle data/demo/ (UniRep-1900 by default: store, SAE, index, card, matches)",
            "Build the demo bundle from ../shared/data: the protein LM (UniRep-1900's published weights, or an ESM-2 "
            "8M-architecture LM trained here), an SAE on its layer, the feature index, the representation card and "
            "the cross-seed matches. Resumable from --work.", args=(c.DemoArgs,)),
    Command("job", "run a job folder written by the app's training page (embed, train, evaluate, index)",
            args=(c.JobArgs,)),
    Command("import", "import a published SAE (InterPLM, InterProt, Biohub ESM C, plm-sae, esm-sae, SAELens, "
            "sparsify) as an esmsae checkpoint",
            "Write a published SAE (hub id, or a local file/folder in its source's own layout) as an esmsae checkpoint "
            "folder (sae.safetensors + cfg.json). No model weights are needed: --model is recorded and checked when "
            "the SAE is used.", args=(c.ImportArgs,)),
    Command("match", "relate the features of two SAEs (decoder cosine; activation correlation on proteins)",
            "For every feature of SAE A its best matches in SAE B: by decoder cosine (same d_in) and, with --fasta, by "
            "the correlation of their per-residue activations on those proteins (any layers or models). Prints a "
            "summary (match rate, features without counterpart, feature splitting).", args=(c.MatchArgs,)),
    Command("steer", "steer the protein LM along an SAE feature and check that the steered sequence carries it",
            "Edit one feature at the SAE's hook (reconstruction error kept), report the steered argmax sequence, the "
            "change in pseudo-perplexity, and whether the feature fires when the steered sequence is re-embedded.",
            args=(c.SteerArgs,)),
    Command("search", "search an index's features by description, concept, label, protein name or id",
            "Every word must occur in the feature's description, best concept, user label or its top proteins' ids "
            "and names (case-insensitive), e.g. 'zinc', 'transmembrane Archaea', 'P47294'.", args=(c.SearchArgs,)),
    Command("probe", "the representation card: linear probes (TM helix, secondary structure) from the LM layer and the "
            "SAE codes against one-hot sequence windows; writes representation.json in the checkpoint",
            args=(c.ProbeArgs,)),
    Command("reference-stats", "store per-feature reference max and IDF in an SAE checkpoint, from an index of it",
            "Write display_max / display_idf (over the index's proteins) into sae.safetensors and describe the "
            "reference set in cfg.json; the inspector, the API and later indexes then use them, so indexes of one SAE "
            "agree.", args=(c.ReferenceStatsArgs,)),
    Command("export", "write an esmsae checkpoint as a SAELens or sparsify folder",
            "Export an esmsae SAE checkpoint for SAELens / Neuronpedia-style tooling or EleutherAI sparsify.",
            args=(c.ExportArgs,)),
)
BY_NAME = {cmd.name: cmd for cmd in TABLE}


def parser() -> argparse.ArgumentParser:
    """The whole command line, generated from :data:`TABLE` and the dataclasses it names."""
    p = argparse.ArgumentParser(prog=PROG, description="Sparse autoencoders for protein language models.")
    subs = p.add_subparsers(dest="cmd", required=True)
    for cmd in TABLE:
        sub = subs.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        for _, cls, skip in cmd.sections:
            add_args(sub, cls, skip=skip)
        for cls in cmd.args:
            add_args(sub, cls, keep_defaults=True)
    return p


def _resolve(ns: argparse.Namespace, cmd: Command) -> dict:
    names = [s for s, _, _ in cmd.sections]
    base = json.loads(Path(ns.config).read_text()) if getattr(ns, "config", "") else {}
    unknown = set(base) - set(names)
    if unknown:
        raise ConfigError(f"{ns.config}: unknown section(s) {sorted(unknown)} for `{cmd.name}`; expected {names}")
    out = {}
    for section, cls, _ in cmd.sections:
        b = from_dict(cls, base[section]) if section in base else None
        out[section] = from_args(cls, ns, b)
    for cls in cmd.args:  # each command's own options are validated by their dataclass too
        from_args(cls, ns)
    return out


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    try:
        return _dispatch(ns)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as e:
        print(f"esmsae {ns.cmd}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(ns: argparse.Namespace) -> int:
    from esmsae.commands import COMMANDS, CONFIGURED

    cmd = BY_NAME[ns.cmd]
    cfg = _resolve(ns, cmd)
    if ns.cmd in COMMANDS:
        return COMMANDS[ns.cmd](ns)
    if ns.save_config:
        Path(ns.save_config).write_text(json.dumps({k: asdict(v) for k, v in cfg.items()}, indent=2) + "\n")
        print(f"wrote {ns.save_config}")
        return 0
    return CONFIGURED[ns.cmd](ns, cfg)


def usage_markdown() -> str:
    """docs/cli.md: every command's ``--help``, as the parser prints it (a test keeps the file equal)."""
    p = parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    out = ["# The command line\n",
           "Generated by `python -m esmsae.docs` from the command table in `esmsae/cli.py` and the config",
           "dataclasses; `tests/test_docs.py` fails when this file differs from what it writes.\n"]
    for name, sub in subs.choices.items():
        sub.prog = f"{PROG} {name}"
        out += [f"## `{PROG} {name}`\n", "```text", sub.format_help().rstrip(), "```\n"]
    return "\n".join(out)


"""Checks the app's forms run before a job starts, so that what the job would reject is refused in the
form, in the form's words: the layer against the model's own config, a data file that exists, parses as
FASTA and (for a relative path) stays inside the workspace or the shared data, a hub id that is in the
local Hugging Face cache, a local folder that holds an SAE. No torch: the Training page imports this.
"""
from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path

from esmsae.config import layer_range
from esmsae.core.fasta import SequenceError, open_text, read_proteins
from esmsae.core.paths import DEMO, ROOT, shared_data, workspace
from esmsae.lm.names import KNOWN_HUB_MODELS, UNIREP_MODELS
from esmsae.published.catalogue import KNOWN_MODELS

# blocks of the local models esmsae knows by name (hub models are read from their config when cached)
KNOWN_LAYERS = {k: n for k, (fam, n, _) in KNOWN_MODELS.items() if fam in ("esmc", "unirep") and n}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
FASTA_RECORDS_CHECKED = 5


class FormError(ValueError):
    """A form value the job would reject; the message names the form's field."""


def _hub_file(repo: str, filename: str) -> str | None:
    """A file of a hub repo from the local Hugging Face cache, or None (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(repo, filename)
        return got if isinstance(got, str) else None
    except Exception:  # a malformed repo id
        return None


def _in_cache(repo: str) -> bool:
    try:
        from huggingface_hub import constants

        return (Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))).is_dir()
    except Exception:
        return False


def model_blocks(name: str, field: str = "Protein LM") -> int:
    """The number of blocks (mLSTM cells for UniRep) of a protein LM, from its config, without loading it."""
    name = (name or "").strip()
    p = Path(name).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        return int(json.loads((p / "config.json").read_text())["num_hidden_layers"])
    base = p.name.lower()
    if base in KNOWN_LAYERS:
        return KNOWN_LAYERS[base]
    if p.is_file() and p.suffix in (".pt", ".pth"):
        raise FormError(f"{field}: {p.name} is a weights file; its layers are checked when the job loads it")
    cfg = _hub_file(name, "config.json") if HUB_ID.fullmatch(name) else None
    if cfg:
        return int(json.loads(Path(cfg).read_text())["num_hidden_layers"])
    known = ", ".join((*KNOWN_HUB_MODELS, *KNOWN_LAYERS))
    raise FormError(
        f"{field}: {name!r} is not a model folder here, not a model esmsae knows, and not in the Hugging Face cache"
        f" (this machine is offline). Known names: {known}; or a local Hugging Face folder."
    )


def check_layers(model: str, layers: list[int], site: str) -> None:
    """Every layer exists in the model at this hook site (the rule the model adapters apply)."""
    try:
        n = model_blocks(model)
    except FormError as e:
        if "weights file" in str(e):
            return
        raise
    unirep = Path(model).name.lower() in UNIREP_MODELS
    lo, hi = (1, n) if unirep else layer_range(site, n)
    if unirep and site != "resid":
        raise FormError(f"Hook site: {Path(model).name} is an mLSTM and has hidden states ('resid') only")
    bad = [x for x in layers if not lo <= x <= hi]
    if bad:
        raise FormError(
            f"Layer(s): {', '.join(map(str, bad))} {'does' if len(bad) == 1 else 'do'} not exist in {model}"
            f" (site {site}: layers {lo}..{hi})"
        )


def _allowed_roots() -> list[Path]:
    return [workspace(), shared_data().resolve(), DEMO.resolve(), (ROOT / "data").resolve()]


def check_fasta(path: str, field: str = "Proteins (FASTA path)") -> Path:
    """The data file exists, is a FASTA file whose first records parse, and a relative path stays inside
    the workspace, the shared data or the bundled data (an absolute path is taken as typed). Returns it."""
    text = (path or "").strip()
    if not text:
        raise FormError(f"{field}: give a FASTA file")
    p = Path(text).expanduser()
    if not p.is_absolute():
        cands = [(r / p).resolve() for r in (workspace(), Path.cwd())]
        p = next((c for c in cands if c.exists()), cands[0])
        if not any(p == r or r in p.parents for r in _allowed_roots()):
            raise FormError(f"{field}: {text!r} leads outside the workspace and the shared data; type the full path")
    if not p.exists():
        raise FormError(f"{field}: data file not found: {text!r}")
    if not p.is_file():
        raise FormError(f"{field}: {text!r} is a folder, not a FASTA file")
    try:
        with open_text(p) as fh:
            first = next((line for line in fh if line.strip()), "")
        if not first.startswith(">"):
            raise FormError(f"{field}: {text!r} is not a FASTA file (its first line does not start with '>')")
        # the first records parse as proteins (the reader the job itself uses)
        for _ in islice(read_proteins(p, unique_ids=False), FASTA_RECORDS_CHECKED):
            pass
    except SequenceError as e:
        raise FormError(f"{field}: {text!r} is not a protein FASTA file: {e}") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise FormError(f"{field}: {text!r} cannot be read as text ({type(e).__name__})") from None
    return p


def check_import_source(source: str, fmt: str = "auto") -> None:
    """A hub id must be in the local Hugging Face cache (offline); a local path must exist and hold an SAE
    in a layout esmsae reads."""
    s = (source or "").strip()
    if not s:
        raise FormError("Source: give a hub id (ORG/NAME) or a local file or folder")
    p = Path(s).expanduser()
    if not p.exists():
        if HUB_ID.fullmatch(s):
            if not _in_cache(s):
                raise FormError(
                    f"Source: {s!r} is not in the Hugging Face cache and this machine is offline; download it on a"
                    " connected machine into the cache (HF_HOME), or give a local file or folder"
                )
            return
        raise FormError(f"Source: {s!r} is neither a local file or folder nor a hub id (ORG/NAME)")
    if fmt != "auto":
        return
    from esmsae.published.canonical import PublishedFormatError
    from esmsae.published.source import detect_format  # no torch until a reader runs

    try:
        found = detect_format(p)
    except PublishedFormatError as e:
        raise FormError("Source: " + str(e).replace("; pass --format", "; choose its format under Format")) from None
    if found == "esmsae":
        raise FormError(f"Source: {s!r} is already an esmsae checkpoint: it appears under Runs as it is")


def form_message(text: str) -> str:
    """A config error in the form's words: ``SAEConfig.k: ...`` becomes ``k (active latents per token): ...``."""
    from esmsae.config import EmbedConfig, EvalConfig, HookConfig, IndexConfig, ModelConfig, SAEConfig, TrainConfig
    from esmsae.config.fields import field_specs

    labels = {}
    for cls in (ModelConfig, HookConfig, EmbedConfig, SAEConfig, TrainConfig, EvalConfig, IndexConfig):
        for s in field_specs(cls, cls.__name__):
            labels[f"{cls.__name__}.{s.name}"] = s.label
    out = re.sub(r"\b(\w+Config)\.(\w+)", lambda m: labels.get(m.group(0), m.group(2).replace("_", " ")), text)
    out = out.replace("pass --format", "choose its format")
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", " "), out)


__all__ = ["FormError", "check_fasta", "check_import_source", "check_layers", "form_message",
           "model_blocks"]

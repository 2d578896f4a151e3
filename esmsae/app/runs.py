"""The runs the app can open (the demo bundle, then every checkpoint under the workspace), the index
file of a checkpoint folder, and the structure files an index names. No SQL here: an index is
read through :class:`esmsae.index.reader.FeatureIndex`."""
from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from esmsae.core.paths import DEMO, shared_data, workspace
from esmsae.sae.checkpoint import find_checkpoints, has_cfg


@dataclass(frozen=True)
class Run:
    name: str
    sae_dir: Path
    index: Path | None

    @property
    def label(self) -> str:
        return self.name + ("" if self.index and self.index.exists() else " (no index yet)")


def list_runs(ws: Path | None = None, demo: Path | None = None) -> list[Run]:
    """The demo bundle first, then every SAE checkpoint under the workspace (newest first)."""
    runs = []
    demo = Path(os.environ.get("ESMSAE_DEMO", DEMO)) if demo is None else demo
    if has_cfg(demo / "sae"):
        runs.append(Run("demo", demo / "sae", demo / "index.duckdb"))
    ws = workspace() if ws is None else ws
    if ws.exists():
        # checkpoint folders 1-3 levels down (a job's run/L3_resid, or whatever `python -m esmsae
        # train|import --out` wrote); the index is index.duckdb there, or another .duckdb file
        runs += [Run(ck.relative_to(ws).as_posix(), ck, index_file(ck)) for ck in find_checkpoints(ws, depth=3)]
    return runs


def index_file(ck: Path) -> Path:
    """The feature index of a checkpoint folder: index.duckdb, else its newest other .duckdb file."""
    if (ck / "index.duckdb").exists():
        return ck / "index.duckdb"
    others = sorted(
        (p for p in ck.glob("*.duckdb") if not p.name.endswith(".labels.duckdb")), key=lambda p: -p.stat().st_mtime
    )
    return others[0] if others else ck / "index.duckdb"


# ---------------------------------------------------------------- structures
def structure_file(index, rel: str) -> Path | None:
    """Locate a structure named in an index (a :class:`FeatureIndex`): in the bundle (gzipped) or in shared/data."""
    for base in (index.path.parent / "structures", shared_data() / "structures"):
        for cand in (base / (rel + ".gz"), base / rel):
            if cand.exists():
                return cand
    return None


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=4)
def _structure_chains(path: str) -> dict[tuple[str, str], dict[str, str]]:
    import csv

    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            rel = row["file"].removeprefix("structures/")
            out[(rel, row["chain"])] = {k: row.get(k) or "" for k in ("title", "uniprot", "organism", "atom_seq",
                                                                       "seqres")}
    return out


def structure_chains_file() -> str:
    """The shared data's structure links table, or "" where it is not here."""
    p = shared_data() / "structures" / "links" / "structure_chains.tsv"
    return str(p) if p.exists() else ""


def structure_chains(path: str | None = None) -> dict[tuple[str, str], dict[str, str]]:
    """The structure links table (``path``, default ``structure_chains_file()``), read once per file: (file
    relative to the structures folder, chain) -> its PDB title, UniProt accession (SIFTS), organism, atom
    sequence and SEQRES; {} where it is not here."""
    p = structure_chains_file() if path is None else path
    return _structure_chains(p) if p else {}


def structure_info(rel: str, chain: str) -> dict[str, str]:
    """The PDB title, UniProt accession and organism of a structure chain (``structure_chains``)."""
    if not rel:
        return {}
    table = structure_chains()
    return table.get((rel, chain)) or table.get((rel.rsplit(".", 1)[0], chain)) or {}

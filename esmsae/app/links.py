"""Links out of the app for the proteins it shows: UniProt entries, RCSB PDB structures and AlphaFold
DB models, from the ids and structure files the index records (pure string work, no network)."""
from __future__ import annotations

import re
from pathlib import PurePosixPath

# UniProt accession format (https://www.uniprot.org/help/accession_numbers)
ACCESSION = re.compile(r"\b([OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})\b")
PDB_ID = re.compile(r"^([0-9][A-Za-z0-9]{3})(?:[_.:-][A-Za-z0-9]+)?$")
AF_MODEL = re.compile(r"AF-([A-Z0-9]+)-F\d+", re.I)


def uniprot_accession(protein_id: str) -> str:
    """The accession in ``sp|P47294|...``, ``tr|...``, ``UniRef90_P47294`` or a bare accession; else ""."""
    pid = protein_id or ""
    parts = pid.split("|")
    if len(parts) >= 2 and parts[0] in ("sp", "tr"):
        return parts[1]
    m = ACCESSION.search(pid.split("_", 1)[1] if pid.startswith("UniRef") else pid)
    return m.group(1) if m else ""


def pdb_id(protein_id: str, structure: str = "") -> str:
    """A PDB id from a structure file name (``pdb/1aki.cif``) or a PDB-chain protein id (``1aki_A``)."""
    for text in (PurePosixPath(structure or "").name.split(".")[0], protein_id or ""):
        m = PDB_ID.match(text)
        if m and not AF_MODEL.search(structure or ""):
            return m.group(1).lower()
    return ""


def protein_links(protein_id: str, structure: str = "") -> dict[str, str]:
    """name -> URL for a protein: its UniProt entry and AlphaFold DB model (by accession), its RCSB entry
    (by PDB id)."""
    out = {}
    acc = uniprot_accession(protein_id)
    m = AF_MODEL.search(structure or "")
    acc = acc or (m.group(1) if m else "")
    if acc:
        out["UniProt"] = f"https://www.uniprot.org/uniprotkb/{acc}/entry"
        out["AlphaFold DB"] = f"https://alphafold.ebi.ac.uk/entry/{acc}"
    pdb = pdb_id(protein_id, structure)
    if pdb:
        out["RCSB PDB"] = f"https://www.rcsb.org/structure/{pdb}"
    return out


def links_html(protein_id: str, structure: str = "") -> str:
    """The links as one HTML line, each opening in a new tab ("" when there are none)."""
    import html

    return " · ".join(f'<a href="{html.escape(url)}" target="_blank" rel="noopener">{html.escape(name)}</a>'
                      for name, url in protein_links(protein_id, structure).items())


def links_markdown(protein_id: str, structure: str = "") -> str:
    """The links as one Markdown line ("" when there are none)."""
    return " · ".join(f"[{name}]({url})" for name, url in protein_links(protein_id, structure).items())

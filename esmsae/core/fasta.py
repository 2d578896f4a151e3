"""Streaming FASTA reading, header metadata and sequence validation."""
from __future__ import annotations

import gzip
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

# The 20 standard residues plus the ambiguity / rare codes every ESM tokenizer knows:
# X (unknown), B (D/N), Z (E/Q), U (selenocysteine), O (pyrrolysine).
STANDARD = "ACDEFGHIKLMNPQRSTVWY"
EXTRA = "XBZUO"
ALPHABET = frozenset(STANDARD + EXTRA)


class SequenceError(ValueError):
    """An input sequence cannot be used; the message names the record and residue."""


@dataclass
class Protein:
    id: str
    sequence: str
    description: str = ""
    organism: str = ""
    taxid: int | None = None

    @property
    def md5(self) -> str:
        return seq_md5(self.sequence)


def seq_md5(sequence: str) -> str:
    """The md5 of a sequence: the key that de-duplicates proteins (one rule, used everywhere)."""
    return hashlib.md5(sequence.encode()).hexdigest()


def is_heldout(sequence: str, fraction: float) -> bool:
    """Deterministic split by sequence hash: identical sequences always land on the same side."""
    if fraction <= 0:
        return False
    h = int(hashlib.md5(sequence.encode()).hexdigest()[:8], 16)
    return h / 16**8 < fraction


def open_text(path: str | Path) -> io.TextIOBase:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FASTA file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


_OS = re.compile(r"\bOS=(.+?)(?=\s+[A-Z]{2}=|$)")
_OX = re.compile(r"\bOX=(\d+)")
_TAX = re.compile(r"\bTax=(.+?)(?=\s+[A-Za-z]+=|$)")
_TAXID = re.compile(r"\bTaxID=(\d+)")


def parse_header(header: str) -> tuple[str, str, str, int | None]:
    """Return (id, description, organism, taxid) from a FASTA header (without '>').

    Understands UniProt (``sp|P12345|NAME_HUMAN desc OS=Homo sapiens OX=9606``) and
    UniRef (``UniRef90_X desc n=1 Tax=Homo sapiens TaxID=9606 RepID=...``) headers.
    """
    header = header.strip()
    first, _, rest = header.partition(" ")
    pid = first
    parts = first.split("|")
    if len(parts) >= 3 and parts[0] in ("sp", "tr"):
        pid = parts[1]
    organism = ""
    taxid: int | None = None
    if m := _OS.search(header):
        organism = m.group(1).strip()
    elif m := _TAX.search(header):
        organism = m.group(1).strip()
    if m := _OX.search(header):
        taxid = int(m.group(1))
    elif m := _TAXID.search(header):
        taxid = int(m.group(1))
    return pid, rest.strip(), organism, taxid


def _records(lines: Iterable[str], source: str) -> Iterator[tuple[str, str]]:
    """(header, raw sequence) records from FASTA lines. Blank lines are ignored."""
    header: str | None = None
    chunks: list[str] = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if header is not None:
                yield header, "".join(chunks)
            header, chunks = line[1:], []
        elif header is None:
            raise SequenceError(f"{source}:{lineno}: sequence data before the first '>' header")
        else:
            chunks.append(line)
    if header is not None:
        yield header, "".join(chunks)


def read_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield (header, raw sequence) records from a FASTA file (plain or .gz), streaming."""
    with open_text(path) as fh:
        yield from _records(fh, str(path))


def write_fasta(
    path: str | Path, records: Iterable[tuple[str, str]], max_len: int | None = None, limit: int | None = None
) -> Path:
    """Write (header, sequence) records as FASTA, written under a temp name and renamed;
    ``max_len`` cuts each sequence, ``limit`` stops after that many records."""
    from esmsae.core.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, "FASTA file") as tmp, open(tmp, "w") as fh:
        for i, (h, s) in enumerate(records):
            if limit is not None and i >= limit:
                break
            fh.write(f">{h}\n{s[:max_len] if max_len else s}\n")
    return path


def clean_sequence(seq: str, record: str = "sequence") -> str:
    """Upper-case, drop whitespace and one trailing stop '*'; reject anything else.

    Raises :class:`SequenceError` naming the record, the character and its 1-based position.
    """
    s = "".join(seq.split()).upper()
    if s.endswith("*"):
        s = s[:-1]
    if not s:
        raise SequenceError(f"{record}: empty sequence")
    for i, ch in enumerate(s):
        if ch not in ALPHABET:
            raise SequenceError(
                f"{record}: invalid residue {ch!r} at position {i + 1} "
                f"(allowed: the 20 standard amino acids and {', '.join(EXTRA)})"
            )
    if looks_like_nucleotides(s):
        raise SequenceError(
            f"{record}: this looks like a nucleotide sequence ({len(s)} letters, all A, C, G, T/U or N), not a"
            " protein: translate it first (esmsae reads amino-acid sequences)"
        )
    return s


def looks_like_nucleotides(s: str, min_len: int = 30, min_share: float = 0.05) -> bool:
    """A DNA / RNA sequence pasted as protein: at least ``min_len`` letters, every one A, C, G, T, U or N,
    and each of A, C, G and T/U at least ``min_share`` of them. As amino acids that would be a protein of
    Ala, Cys, Gly, Thr (and Asn, selenocysteine) only, which real proteins of that length are not."""
    if len(s) < min_len or not set(s) <= NUCLEOTIDES:
        return False
    n = len(s)
    return all(s.count(a) / n >= min_share for a in "ACG") and (s.count("T") + s.count("U")) / n >= min_share


NUCLEOTIDES = frozenset("ACGTUN")


def read_proteins(
    path: str | Path, on_invalid: str = "error", skipped: list | None = None, unique_ids: bool = True
) -> Iterator[Protein]:
    """Stream validated :class:`Protein` records. Duplicate ids are an error (``unique_ids=False``:
    the caller checks, e.g. in DuckDB, without a set of every id in memory).

    With ``on_invalid='skip'`` bad records are left out and appended to ``skipped``
    as (id, reason) pairs so that callers can report a count.
    """
    seen: set[str] = set()
    for header, raw in read_fasta(path):
        pid, desc, org, taxid = parse_header(header)
        if unique_ids:
            if pid in seen:
                raise SequenceError(f"{path}: duplicate record id {pid!r}")
            seen.add(pid)
        try:
            seq = clean_sequence(raw, record=f"record {pid!r}")
        except SequenceError as e:
            if on_invalid == "skip":
                if skipped is not None:
                    skipped.append((pid, str(e)))
                continue
            raise
        yield Protein(id=pid, sequence=seq, description=desc, organism=org, taxid=taxid)


def parse_fasta_text(text: str) -> list[Protein]:
    """Parse pasted text: FASTA records, or one bare sequence. Errors name the record."""
    text = text.strip()
    if not text:
        raise SequenceError("empty input: paste a protein sequence or FASTA records")
    if not text.startswith(">"):
        return [Protein(id="query", sequence=clean_sequence(text, "pasted sequence"))]
    out: list[Protein] = []
    for header, raw in _records(text.splitlines(), "pasted text"):
        pid, desc, org, taxid = parse_header(header)
        pid = pid or f"record{len(out) + 1}"
        out.append(Protein(pid, clean_sequence(raw, f"record {pid!r}"), desc, org, taxid))
    return out

"""Rendering: hostile text from structure files, headers and labels never becomes markup or script."""
import re

import numpy as np
import pytest

from esmsae.app.render import parse_structure, script_json, structure_html, track_html

EVIL = "</script><script>document.title='pwned'</script><img src=x onerror=alert(1)>"


def test_script_json_cannot_close_the_script():
    s = script_json({"a": EVIL, "b": "\u2028"})
    assert "<" not in s and ">" not in s and "&" not in s
    import json

    assert json.loads(s) == {"a": EVIL, "b": "\u2028"}  # still the same data for the browser


def test_hostile_structure_file_stays_data(shared):
    text = (shared / "structures" / "foldseek" / "1tim.pdb").read_text()
    hostile = f"REMARK 999 {EVIL}\n" + text
    chains = parse_structure(hostile, "pdb")
    seq, resi = chains["A"]
    page = structure_html(hostile, "pdb", "A", resi, np.linspace(0, 1, len(resi)), 1.0)
    # exactly the template's two script elements: the 3Dmol.js include and the viewer code
    assert len(re.findall(r"<script\b", page)) == 2 and page.count("</script>") == 2
    assert "<script>document.title" not in page and "<img src=x" not in page
    # the hostile chain id path is escaped too
    page2 = structure_html(text, "pdb", EVIL, resi, np.zeros(len(resi)), 1.0)
    assert page2.count("</script>") == 2


def test_hostile_title_and_residues_in_tracks_are_escaped():
    out = track_html("MK<V", [0, 1], [1.0, 0.5], 1.0, title=EVIL)
    assert "<script>" not in out and "<img" not in out and "&lt;script&gt;" in out
    assert "&lt;" in out  # the '<' residue itself


def _pdb(residues):
    """A tiny PDB: (resname, resseq, icode) residues of chain A, backbone atoms only."""
    lines, n = [], 1
    for k, (name, num, ic) in enumerate(residues):
        for atom, dx in (("N", 0.0), ("CA", 1.5), ("C", 3.0)):
            lines.append(
                f"ATOM  {n:5d}  {atom:<3} {name} A{num:4d}{ic:1s}   {k * 3.8 + dx:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00"
                f"           {atom[0]}"
            )
            n += 1
    return "\n".join(lines + ["END"]) + "\n"


def test_insertion_codes_and_chain_breaks():
    from esmsae.app.render import chain_breaks

    text = _pdb([("ALA", 1, ""), ("GLY", 2, ""), ("GLY", 2, "A"), ("SER", 5, ""), ("LYS", 6, "")])
    seq, resi = parse_structure(text, "pdb")["A"]
    assert seq == "AGGSK" and resi == ["1", "2", "2A", "5", "6"]  # inserted residues keep their own label
    assert chain_breaks(resi) == [2]  # residues 3-4 are missing
    page = structure_html(text, "pdb", "A", resi, np.array([0.0, 0.0, 1.0, 0.0, 0.0]), 1.0)
    assert '"2A": "#ff0a0a"' in page and '"2": "#f2f2f2"' in page  # 2 and 2A get their own colours
    assert "a.icode" in page


@pytest.mark.parametrize("case", ["empty", "water_only", "truncated_cif", "not_utf8", "garbage"])
def test_bad_structures_are_named(shared, case):
    from esmsae.app.render import StructureError

    cif = (shared / "structures" / "pdb" / "1igy.cif").read_text()
    text, fmt = {
        "empty": ("", "pdb"),
        "water_only": ("HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\nEND\n", "pdb"),
        "truncated_cif": (cif[: len(cif) // 2], "cif"),
        "not_utf8": (b"\xff\xfe\x00garbage\x80\x81".decode("utf-8", errors="replace"), "pdb"),
        "garbage": ("this is not a structure\n", "cif"),
    }[case]
    if case == "truncated_cif":  # cut in the middle: what is whole is read, and it is flagged as cut short
        from esmsae.app.render import truncation_warnings

        try:
            chains = parse_structure(text, fmt)
        except StructureError:
            return
        assert truncation_warnings(text, fmt, chains)
        return
    with pytest.raises(StructureError, match="empty|no protein chains|could not read|no models"):
        parse_structure(text, fmt)


def test_multi_chain_mmcif_gives_every_chain(shared):
    chains = parse_structure((shared / "structures" / "pdb" / "1ncb.cif").read_text(), "cif")
    assert {c: len(s) for c, (s, _) in chains.items()} == {"N": 389, "L": 214, "H": 221}

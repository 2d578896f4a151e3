"""Rendering: hostile text from structure files, headers and labels never becomes markup or script."""
import re

import numpy as np

from esmsae.render import parse_structure, script_json, structure_html, track_html

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

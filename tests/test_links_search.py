"""Links out (UniProt, RCSB, AlphaFold DB), structure names from the shared links table, readable
tables, and ranked search (BM25 within tiers) on the demo bundle's index."""
import numpy as np
import pandas as pd
import pytest

from esmsae.app.columns import formats, human, match_verdict
from esmsae.app.links import pdb_id, protein_links, uniprot_accession
from esmsae.core.paths import DEMO
from esmsae.index.reader import FeatureIndex


def test_links_from_ids_and_structure_files():
    assert uniprot_accession("sp|P47294|Y048_MYCGE") == "P47294"
    assert uniprot_accession("UniRef90_Q9Y2X3") == "Q9Y2X3"
    assert uniprot_accession("A0A023GPI8") == "A0A023GPI8"  # a 10-character accession
    assert uniprot_accession("chezod_5657") == "" and uniprot_accession("MGEN_001") == ""
    assert pdb_id("3lb2-B") == "3lb2" and pdb_id("x", "pdb/1aki.cif") == "1aki"
    assert pdb_id("x", "plip/3pxf.pdb") == "3pxf"
    assert protein_links("1aki_A") == {"RCSB PDB": "https://www.rcsb.org/structure/1aki"}
    af = protein_links("AF-Q96HM7-F1-model_v4_A", "alphafold/AF-Q96HM7-F1-model_v4.pdb")
    assert af == {"UniProt": "https://www.uniprot.org/uniprotkb/Q96HM7/entry",
                  "AlphaFold DB": "https://alphafold.ebi.ac.uk/entry/Q96HM7"}  # an AF model is not a PDB entry


def test_structure_names_come_from_the_shared_links_table(shared):
    from esmsae.app.runs import structure_info

    info = structure_info("plip/1acj.pdb", "A")
    assert "ACETYLCHOLINESTERASE" in info["title"] and info["uniprot"] == "P04058"
    assert structure_info("plip/no-such.pdb", "A") == {}


def test_readable_tables_have_no_raw_names_or_nan_cells():
    df = pd.DataFrame({"grp": ["a", None], "n_fire": [1, 2], "log_odds": [0.5, np.nan], "q": [0.01, 0.2]})
    out = human(df)
    assert list(out.columns) == ["group", "proteins where it fires", "log odds ratio", "q (FDR)"]
    assert out["log odds ratio"].tolist() == [0.5, "n/a"] and out["group"].tolist() == ["a", ""]
    assert formats(df) == {"q (FDR)": "%.2e"}  # a column with "n/a" cells is shown as it is
    assert match_verdict(0.9, 0.2).startswith("above chance") and match_verdict(0.21, 0.2).startswith("at chance")


@pytest.mark.skipif(not (DEMO / "index.duckdb").exists(), reason="demo bundle not built")
def test_search_is_ranked_by_relevance_over_whole_words_and_takes_symbols_literally():
    idx = FeatureIndex(DEMO / "index.duckdb")
    for query in ("transmembrane", "signal peptide", "residue detector"):
        got = idx.features(search=query, hide_dead=False)
        assert len(got), query
        rel = got["relevance"].to_numpy()
        assert (np.diff(rel) <= 1e-12).all(), query  # relevance first, descending
    tm = idx.features(search="transmembrane", hide_dead=False)
    # "transmembrane" also finds TMbed's "TM helix" / "TM strand" features (describe.SYNONYMS), matches first
    # (no feature matches a TM concept in the rebuilt demo: the top rows' verdicts name it as their best)
    assert tm["verdict"].head(5).str.contains("TMbed: TM|transmembrane").all(), tm.head(5)
    # symbols are not words: "%", "_" and "_ %" find nothing ("_" matched 3,710 features through hidden ids)
    for q in ("%", "_", "_ %"):
        assert idx.features(search=q, hide_dead=False).empty, q
    # explicit sort order is kept when asked
    by_freq = idx.features(search="transmembrane", hide_dead=False, sort="freq_protein", descending=True)
    assert (np.diff(by_freq["freq_protein"].to_numpy()) <= 0).all()


def test_structures_for_a_protein_by_its_chain_accession_or_sequence(shared):
    """A top example finds its structure: its own indexed chain, else a chain the shared links tie to
    its UniProt accession or to its exact sequence; an unlinked protein finds none."""
    import csv

    from esmsae.app.structure_view import structures_for

    assert structures_for("x", "MKV", "pdb/1aki.cif", "A") == [("pdb/1aki.cif", "A")]
    assert ("plip/1acj.pdb", "A") in structures_for("sp|P04058|ACES_TORCA", "")
    with open(shared / "structures" / "links" / "structure_chains.tsv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh, delimiter="\t") if not r["uniprot"] and r["atom_seq"])
    assert (row["file"].removeprefix("structures/"), row["chain"]) in structures_for("query_1", row["atom_seq"])
    assert structures_for("query_1", "MKVLAAGIVGLLLA") == []


def test_label_lanes_put_spans_and_activations_on_one_axis():
    from esmsae.app.render import label_lanes_html

    spans = pd.DataFrame({"pidx": [0, 0], "source": ["UniProt", "TMbed"],
                          "concept": ["UniProt: domain", "TMbed: TM helix"], "starts": [[2], [0]], "ends": [[5], [1]]})
    h = label_lanes_html(10, [3], [0.5], 1.0, spans, first="TMbed: TM helix")
    assert "left:20.000%;width:30.000%" in h and 'title="domain: 3-5"' in h  # residues 3-5 of 10
    assert 'title="4: 0.500"' in h and "left:30.000%" in h  # the firing residue, 1-based in the tip
    assert h.index(">TMbed<") < h.index(">UniProt<")  # the feature's best concept's source first
    import re

    swatches = re.findall(r"width:9px;height:9px;background:(#[0-9A-Fa-f]+)", h)
    assert len(swatches) == 2 and len(set(swatches)) == 2  # one shared legend: no two concepts share a colour
    assert label_lanes_html(10, [3], [0.5], 1.0, spans.iloc[:0]) == ""
    dense = pd.DataFrame({"pidx": [0], "source": ["FLIP conservation"], "concept": ["FLIP conservation: high (7-9)"],
                          "starts": [list(range(0, 200, 2))], "ends": [list(range(1, 201, 2))]})
    g = label_lanes_html(200, [], [], 1.0, dense)
    assert "linear-gradient" in g and g.count("<span") < 10  # per-residue partitions: one gradient, not 100 bars


def test_index_keeps_the_labels_of_its_example_proteins(built_index, shared):
    """label_spans holds, for every example protein with labels, exactly the spans of its label
    records (known answer: the label files, read again here), and no protein that is not an example."""
    from esmsae.core.fasta import seq_md5
    from esmsae.index.labels import load_all

    path, _ = built_index
    idx = FeatureIndex(path)
    ex = set(idx.q("SELECT pidx FROM top_examples UNION SELECT pidx FROM quantile_examples")["pidx"])
    spans = idx.q("SELECT * FROM label_spans")
    assert len(spans) and set(spans["pidx"]) <= ex
    prot = idx.q("SELECT pidx, sequence, length FROM proteins").set_index("pidx")
    by_md5 = {}
    for lab in load_all(shared):
        by_md5.setdefault(seq_md5(lab.sequence), {}).setdefault(lab.source, lab)
    for _, r in spans.iterrows():
        assert all(0 <= a < b <= prot.at[r["pidx"], "length"] for a, b in zip(r["starts"], r["ends"]))
        lab = by_md5[seq_md5(prot.at[r["pidx"], "sequence"])][r["source"]]
        assert sorted(lab.spans[r["concept"]]) == [(int(a), int(b)) for a, b in zip(r["starts"], r["ends"])]
    got = idx.label_spans(list(spans["pidx"][:1]))
    assert set(got["pidx"]) == {spans["pidx"].iloc[0]}

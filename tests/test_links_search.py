"""Links out (UniProt, RCSB, AlphaFold DB), structure names from the shared links table, readable
tables, and ranked search (BM25 within tiers) on the demo bundle's index."""
import numpy as np
import pandas as pd
import pytest

from esmsae.columns import formats, human, match_verdict
from esmsae.index.reader import FeatureIndex
from esmsae.links import pdb_id, protein_links, uniprot_accession
from esmsae.paths import DEMO


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
    from esmsae.runs import structure_info

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
def test_search_is_ranked_by_tier_then_bm25_and_takes_wildcards_literally():
    idx = FeatureIndex(DEMO / "index.duckdb")
    info = idx.q("SELECT feature, matches_concept, residue_detector FROM features").set_index("feature")
    for query in ("transmembrane", "signal peptide", "residue detector"):
        got = idx.features(search=query, hide_dead=False)
        assert len(got), query
        tier = np.where(info.loc[got["feature"], "matches_concept"], 0,
                        np.where(info.loc[got["feature"], "residue_detector"], 2, 1))
        assert (np.diff(tier) >= 0).all(), query  # concept matches first, residue detectors last
        for t in np.unique(tier):  # BM25 relevance descending within a tier
            rel = got["relevance"].to_numpy()[tier == t]
            assert (np.diff(rel) <= 1e-12).all(), (query, t)
    tm = idx.features(search="transmembrane", hide_dead=False)
    assert info.loc[int(tm["feature"].iloc[0]), "matches_concept"]  # the first hit matches a concept
    # "transmembrane" also finds TMbed's "TM helix" / "TM strand" features (describe.SYNONYMS)
    assert tm["best_concept"].head(5).str.startswith("TMbed: TM").all(), tm.head(5)
    # every word must occur, taken literally: SQL wildcards are characters ("e_e" would match "ere" in LIKE)
    text = idx.q("SELECT feature, search_text FROM features").set_index("feature")["search_text"].fillna("").str.lower()
    for q in ("%", "e_e", "100%"):
        want = set(text.index[text.str.contains(q, regex=False)])
        assert set(idx.features(search=q, hide_dead=False)["feature"]) == want, q
    assert text.str.contains("e.e", regex=True).sum() > len(idx.features(search="e_e", hide_dead=False))
    # explicit sort order is kept when asked
    by_freq = idx.features(search="transmembrane", hide_dead=False, sort="freq_protein", descending=True)
    assert (np.diff(by_freq["freq_protein"].to_numpy()) <= 0).all()

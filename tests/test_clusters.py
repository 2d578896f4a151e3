"""Embedding clusters as a grouping (esmsae.index.clusters): known answers."""
import json

import duckdb
import numpy as np
import pandas as pd

from esmsae.config import IndexConfig
from esmsae.core.fasta import write_fasta
from esmsae.index.clusters import cluster_profiles, cluster_vectors


def _families(n=24, seed=0):
    """Two families that no embedding can confuse: hydrophobic helices and charged, proline-rich coils."""
    rng = np.random.default_rng(seed)
    a = ["M" + "".join(rng.choice(list("LIVFAMW"), int(rng.integers(60, 120)))) for _ in range(n)]
    b = ["M" + "".join(rng.choice(list("DEKRPGSN"), int(rng.integers(60, 120)))) for _ in range(n)]
    return a, b


def test_two_separated_families_make_two_clusters_deterministically(tmp_path, tiny_sae):
    from esmsae.index.build import build_index

    a, b = _families()
    fa = write_fasta(
        tmp_path / "fam.fasta",
        [(f"A{i} hydrophobic protein OS=Escherichia coli OX=83333", s) for i, s in enumerate(a)]
        + [(f"B{i} charged protein OS=Homo sapiens OX=9606", s) for i, s in enumerate(b)],
    )
    tables = []
    for run in (1, 2):
        cfg = IndexConfig(
            sae=str(tiny_sae),
            out=str(tmp_path / f"i{run}.duckdb"),
            fasta=[str(fa)],
            cluster_proteins=2,
            umap=False,
            min_group_size=5,
            top_n=3,
        )
        con = duckdb.connect(str(build_index(cfg, progress=False)), read_only=True)
        prof = con.execute("SELECT * FROM cluster_profiles ORDER BY cluster").df()
        # clusters of the same LM states the SAE encodes: described, never tested
        assert con.execute("SELECT count(*) FROM group_usage WHERE grouping = 'embedding cluster' AND q IS NOT NULL"
                           " AND NOT isnan(q)").fetchone()[0] == 0
        groups = con.execute("SELECT * FROM groups WHERE grouping = 'embedding cluster' ORDER BY grp").df()
        usage = con.execute(
            "SELECT grp, feature, q, composition_driven FROM group_usage WHERE grouping = 'embedding cluster' "
            "ORDER BY grp, feature"
        ).df()
        con.close()
        tables.append((prof, groups, usage))
    prof, groups, _ = tables[0]
    assert groups.n_proteins.tolist() == [24, 24] and groups.tested.all()
    # each cluster is one family: all of one kingdom, all of one protein name
    kingdoms = sorted((json.loads(k) for k in prof.kingdoms), key=str)
    assert kingdoms == [{"Bacteria": 1.0}, {"Eukaryota": 1.0}]
    assert sorted(prof.top_protein_names) == ["charged protein (24)", "hydrophobic protein (24)"]
    for t1, t2 in zip(tables[0], tables[1]):  # the same seed: the same clusters and tests
        pd.testing.assert_frame_equal(t1, t2)


def test_cluster_vectors_separate_and_repeat():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(0, 1, (30, 8)), rng.normal(6, 1, (20, 8))]).astype(np.float16)
    lab = cluster_vectors(X, 2, seed=0)
    assert (lab[:30] == 0).all() and (lab[30:] == 1).all()  # renumbered by size: the 30 first
    assert (cluster_vectors(X, 2, seed=0) == lab).all()


def test_profile_composition_equals_a_hand_count():
    labels = np.array([0, 0, 0, 1, 1])
    proteins = pd.DataFrame(
        {
            "length": [100, 200, 300, 50, 70],
            "kingdom": ["Archaea", "Archaea", "Bacteria", "", "Eukaryota"],
            "organism": ["Pyrococcus furiosus", "Pyrococcus furiosus", "Escherichia coli", "", "Homo sapiens"],
            "description": [
                "Ferredoxin OS=Pyrococcus furiosus",
                "Ferredoxin",
                "Porin",
                "Uncharacterized protein",
                "Actin",
            ],
        }
    )
    usage = pd.DataFrame({"grp": ["cluster 0", "cluster 0", "cluster 1"], "feature": [3, 4, 5], "q": [0.01, 0.2, 0.001],
                          "log_odds": [1.5, 2.0, 0.7], "composition_driven": [False, False, True]})
    feats = pd.DataFrame(
        {"feature": [3, 4, 5], "matches_concept": [True, True, True], "best_concept": ["TMbed: TM helix", "X", "Y"]}
    )
    p = cluster_profiles(labels, proteins, usage, feats, 2).set_index("cluster")
    assert p.loc["cluster 0", "n_proteins"] == 3 and p.loc["cluster 0", "length_median"] == 200
    assert json.loads(p.loc["cluster 0", "kingdoms"]) == {"Archaea": round(2 / 3, 3), "Bacteria": round(1 / 3, 3)}
    assert p.loc["cluster 0", "top_organisms"] == "Pyrococcus furiosus (2); Escherichia coli (1)"
    assert p.loc["cluster 0", "top_protein_names"] == "Ferredoxin (2); Porin (1)"
    # descriptive: the features used most over the rest (log odds > 1), whatever their q (the test is circular)
    assert p.loc["cluster 0", "enriched_concepts"] == "X (feature 4); TMbed: TM helix (feature 3)"
    assert p.loc["cluster 1", "no_kingdom"] == 1 and p.loc["cluster 1", "n_enriched_features"] == 0  # 0.7 < 1

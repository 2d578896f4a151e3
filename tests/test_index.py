"""The feature index against a brute-force computation on real M. genitalium proteins."""
import json

import duckdb
import numpy as np
import pytest
import torch
from scipy.stats import fisher_exact

from esmsae.checkpoint import load_sae
from esmsae.concepts import load_all, load_tmbed, runs
from esmsae.config import ConfigError, IndexConfig, ModelConfig
import esmsae.index.build as idx_mod
from esmsae.fasta import read_fasta
from esmsae.index import IndexError_, build_index, collect, enrichment, read_grouping
from esmsae.plm import Hook, ModelMismatchError, load_plm


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_sae, mgen_full, shared, esm2_dir):
    tmp = tmp_path_factory.mktemp("idx")
    groups = tmp / "half.tsv"
    ids = [h.split()[0] for h, _ in read_fasta(mgen_full)]
    groups.write_text("id\tgroup\n" + "".join(f"{pid}\t{'A' if i % 3 == 0 else 'B'}\n" for i, pid in enumerate(ids)) + "NOT_A_PROTEIN\tA\n")
    cfg = IndexConfig(sae=str(tiny_sae), out=str(tmp / "index.duckdb"), fasta=[str(mgen_full)], concepts=str(shared),
                      groups=[str(groups)], top_n=5, umap=False, batch_tokens=2048)
    # a tiny example block, so the brute-force tests also cover the blocked table writes
    block, idx_mod.EXAMPLE_BLOCK = idx_mod.EXAMPLE_BLOCK, 7
    try:
        path = build_index(cfg, progress=False)
    finally:
        idx_mod.EXAMPLE_BLOCK = block
    return path, cfg


def _dense_codes(cfg, esm2_dir, tiny_sae):
    """Brute force: every protein through model + SAE, dense [L, F] codes."""
    plm = load_plm(ModelConfig(name=str(esm2_dir)))
    sae, meta = load_sae(tiny_sae)
    seqs = [s for _, s in read_fasta(cfg.fasta[0])]
    out = []
    for s in seqs:
        x = plm.embed([s], [Hook(4, "resid")])[0]["L4_resid"]
        with torch.no_grad():
            out.append(sae.encode_dense(x).numpy())
    return seqs, out


def test_index_matches_brute_force(built_index, esm2_dir, tiny_sae):
    path, cfg = built_index
    con = duckdb.connect(str(path), read_only=True)
    prots = con.execute("SELECT * FROM proteins ORDER BY pidx").df()
    seqs, dense = _dense_codes(cfg, esm2_dir, tiny_sae)
    by_seq = {s: d for s, d in zip(seqs, dense)}
    codes = [by_seq[s] for s in prots["sequence"]]
    F = codes[0].shape[1]
    fires_res = sum((c > 0).sum(0) for c in codes)
    prot_max = np.stack([c.max(0) for c in codes])  # [P, F]
    feats = con.execute("SELECT * FROM features ORDER BY feature").df()
    n_res = sum(len(c) for c in codes)
    np.testing.assert_allclose(feats["freq_residue"], fires_res / n_res, atol=1e-9)
    np.testing.assert_allclose(feats["freq_protein"], (prot_max > 0).mean(0), atol=1e-9)
    np.testing.assert_allclose(feats["max_act"], prot_max.max(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["idf"], np.log(len(codes) / np.maximum((prot_max > 0).sum(0), 1)), rtol=1e-6)
    assert (feats["dead"] == (fires_res == 0)).all()
    # top examples: the 5 strongest proteins per feature, with exact tracks
    top = con.execute("SELECT * FROM top_examples ORDER BY feature, rank").df()
    for f in range(F):
        want = np.sort(prot_max[:, f][prot_max[:, f] > 0])[::-1][:5]
        got = top[top.feature == f]
        np.testing.assert_allclose(got["max_act"].to_numpy(), want, rtol=1e-4, atol=1e-5)
    for _, r in top.sample(20, random_state=0).iterrows():
        col = codes[r.pidx][:, r.feature]
        assert list(r.positions) == np.flatnonzero(col > 0).tolist()
        np.testing.assert_allclose(r["values"], col[col > 0], rtol=1e-4, atol=1e-5)
    # quantile examples are real examples of their feature, in the right activation bin
    q = con.execute("SELECT * FROM quantile_examples").df()
    assert len(q) and (q.max_act >= q.bin_lo - 1e-6).all() and (q.max_act <= q.bin_hi + 1e-6).all()
    for _, r in q.sample(10, random_state=0).iterrows():
        assert abs(prot_max[r.pidx, r.feature] - r.max_act) < 1e-4


def test_concept_f1_matches_brute_force(built_index, esm2_dir, tiny_sae, shared):
    path, cfg = built_index
    con = duckdb.connect(str(path), read_only=True)
    prots = con.execute("SELECT * FROM proteins ORDER BY pidx").df()
    seqs, dense = _dense_codes(cfg, esm2_dir, tiny_sae)
    by_seq = {s: d for s, d in zip(seqs, dense)}
    labels = {}
    for lab in load_all(shared):
        if lab.source == "UniProt":
            labels.setdefault(lab.sequence, []).append(lab)
    concept = "UniProt: transmembrane"
    fmax = con.execute("SELECT max_act FROM features ORDER BY feature").df()["max_act"].to_numpy()
    f1 = con.execute("SELECT * FROM concept_f1 WHERE concept = ?", [concept]).df()
    assert len(f1) > 0
    for _, r in f1.sort_values("f1", ascending=False).head(5).iterrows():
        tp = act = hit = n_dom = 0
        for s in prots["sequence"]:
            if s not in labels:
                continue
            col = by_seq[s][:, r.feature]
            on = col > r.threshold * fmax[r.feature] if r.threshold > 0 else col > 0
            act += on.sum()
            spans = [sp for lab in labels[s] for sp in lab.spans.get(concept, [])]
            mask = np.zeros(len(s), bool)
            for a, b in spans:
                mask[a:b] = True
                hit += on[a:b].any()
            n_dom += len(spans)
            tp += (on & mask).sum()
        assert r.tp_residues == tp and r.active_residues == act and r.hit_domains == hit
        p, rec = tp / act, hit / n_dom
        assert r.f1 == pytest.approx(2 * p * rec / (p + rec), rel=1e-6)


def test_group_usage_and_enrichment_match_fisher(built_index):
    path, _ = built_index
    con = duckdb.connect(str(path), read_only=True)
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    assert json.loads(meta["collect"])["unknown_group_ids"]["half"] == 1  # reported, not silently dropped
    g = con.execute("SELECT * FROM group_usage WHERE grouping = 'half'").df()
    sizes = dict(con.execute("SELECT grp, n_proteins FROM groups WHERE grouping = 'half'").fetchall())
    assert sizes == {"A": 20, "B": 40}
    for _, r in g.sample(15, random_state=1).iterrows():
        other = g[(g.feature == r.feature) & (g.grp != r.grp)]
        c = int(other.n_fire.sum()) if len(other) else 0
        n_other = 60 - r.n_proteins
        table = [[r.n_fire, r.n_proteins - r.n_fire], [c, n_other - c]]
        assert r.p == pytest.approx(fisher_exact(table, alternative="greater")[1], rel=1e-6, abs=1e-12)
        assert r.q >= r.p - 1e-12


def test_bh_and_enrichment_known_answer():
    # group 0 has the feature in 9/10 proteins, group 1 in 1/10
    res = enrichment(np.array([[9], [1]]), np.array([10, 10]))
    assert res["p"][0, 0] == pytest.approx(fisher_exact([[9, 1], [1, 9]], alternative="greater")[1])
    assert res["log_odds"][0, 0] == pytest.approx(np.log(9.5 * 9.5 / (1.5 * 1.5)))
    assert res["log_odds"][1, 0] < 0


def test_bad_index_input(tmp_path, tiny_sae, mgen_full, esm2_dir, shared):
    bad = tmp_path / "g.tsv"
    bad.write_text("P99999\tX\n")
    with pytest.raises(IndexError_, match="none of its 1 protein ids"):
        collect(IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "i.duckdb"), fasta=[str(mgen_full)], groups=[str(bad)]))
    broken = tmp_path / "g.json"
    broken.write_text('{"A": [["MKV*Z1", "x"]]}')
    with pytest.raises(ValueError, match="group 'A' entry 0"):
        read_grouping(broken)
    dup = tmp_path / "dup.fasta"
    dup.write_text(">a\nMKVL\n>a\nMKVA\n")
    with pytest.raises(ValueError, match="duplicate"):
        collect(IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "i.duckdb"), fasta=[str(dup)]))
    with pytest.raises(ConfigError, match="top_n"):
        IndexConfig(top_n=0)
    # an SAE whose d_in does not fit the model: clear error, nothing written
    from esmsae.plm import build_esmc

    esmc = tmp_path / "esmc.pth"
    torch.save(build_esmc(128, 2, 3, seed=0).state_dict(), esmc)
    out = tmp_path / "x.duckdb"
    with pytest.raises(ModelMismatchError, match="d_in is 320"):
        build_index(IndexConfig(sae=str(tiny_sae), out=str(out), fasta=[str(mgen_full)], model=str(esmc)), progress=False)
    assert not out.exists()


def test_grouping_json_adds_proteins(tmp_path, tiny_sae, mgen_full):
    seqs = [(s, h) for h, s in read_fasta(mgen_full)][:3]
    js = tmp_path / "sampled_sequences.json"
    js.write_text(json.dumps({"Mollicutes": [[s, h] for s, h in seqs[:2]], "Other": [["MKTAYIAKQRQISFVKSHFSRQ", "new_protein OS=X"]]}))
    items, rep = collect(IndexConfig(sae=str(tiny_sae), out=str(tmp_path / "i.duckdb"), fasta=[str(mgen_full)], groups=[str(js)]))
    assert len(items) == 61
    grp = {it.id: it.groups.get("sampled_sequences") for it in items}
    assert grp["new_protein"] == "Other" and sum(v == "Mollicutes" for v in grp.values()) == 2


def test_concept_loaders_on_shared(shared):
    tm = load_tmbed(shared / "tmbed")
    assert len(tm) > 6000 and {t.kingdom for t in tm} >= {"Eukaryota", "Bacteria", "Archaea"}
    helix = [t for t in tm if "TMbed: TM helix" in t.spans]
    assert helix and all(b - a >= 5 for t in helix[:50] for a, b in t.spans["TMbed: TM helix"])
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]


def test_user_labels_survive_a_rebuild(built_index):
    from esmsae.explore import get_labels, set_label
    from esmsae.index import labels_path

    path, cfg = built_index
    set_label(path, 3, "kept across rebuilds")
    before = path.stat().st_mtime_ns
    build_index(cfg, progress=False)  # written as .tmp, then renamed over the old index
    assert path.stat().st_mtime_ns != before and labels_path(path).exists()
    assert get_labels(path)[3] == "kept across rebuilds"
    assert not path.with_name(path.name + ".tmp").exists()

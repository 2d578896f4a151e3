"""The composition control of group enrichment (esmsae.index.composition): known answers."""
import numpy as np

from esmsae.index.composition import N_COMP, FiringSpill, composition_bins, composition_counts, composition_enrichment
from esmsae.index.group_stats import enrichment


def _spill(tmp_path, n=600, seed=0):
    """Group 1 proteins are E-rich, group 0 E-poor. Feature 0 fires on E-rich proteins whatever their group
    (a composition effect); feature 1 fires on group-1 proteins whatever their composition (a group effect)."""
    rng = np.random.default_rng(seed)
    sp = FiringSpill(tmp_path, ["kingdom"])
    groups, e_rich = [], []
    for p in range(n):
        g = int(p % 2)
        rich = rng.random() < (0.8 if g else 0.2)
        aa = rng.integers(5, 15, 20)
        aa[3] = 60 if rich else 2  # amino acid 3 (E in ACDEFGHIKLMNPQRSTVWY)
        feats = ([0] if rich and rng.random() < 0.7 else []) + ([1] if g and rng.random() < 0.6 else [])
        sp.put(0, [g], aa, np.array(feats, np.int32))
        groups.append(g)
        e_rich.append(rich)
    return sp, np.array(groups)


def test_composition_bins_hand_computed():
    aa = np.zeros((2, 20), int)
    aa[0, 3], aa[0, 0] = 10, 90  # 10% E
    aa[1, 3], aa[1, 0] = 2, 98  # 2% E
    freq = np.full(20, 0.05)
    b = composition_bins(aa, freq)
    assert b[0, 3] == 2 and b[1, 3] == 0  # 10% >= 1.25 x 5%; 2% < 0.75 x 5%
    assert b[0, 0] == 2 and b[1, 1] == 0


def test_composition_driven_enrichment_disappears_when_stratified(tmp_path):
    sp, groups = _spill(tmp_path)
    top_aa = np.array([3, 0])  # feature 0's top amino acid is E; feature 1's is A
    freq = np.full(20, 0.05)
    (fire, prot), = composition_counts(sp, top_aa, freq, [2], 1)
    assert fire.shape == (2, N_COMP, 2) and prot.shape == (20, 2, N_COMP)
    assert prot[3].sum() == len(groups) and fire[:, :, 1].sum(1)[0] == 0  # feature 1 never fires in group 0
    # the length-only test (one length bin) sees both features enriched in group 1
    plain = enrichment(fire.sum(1)[:, None, :], prot[3].sum(1)[:, None], "cmh")
    assert plain["q"][1, 0] < 1e-6 and plain["q"][1, 1] < 1e-6
    comp = composition_enrichment(fire, prot, top_aa)
    assert comp["q"][1, 0] > 0.05  # composition-driven: gone once E content is stratified
    assert comp["q"][1, 1] < 1e-6  # a real group effect survives
    sp.close()


def test_composition_driven_is_a_lost_effect_not_a_q_crossing():
    """An effect that keeps most of its log odds once composition is stratified is not composition-driven,
    even where its q crosses 0.05 (fewer informative strata); one that loses more than half is."""
    import pandas as pd

    from esmsae.index import frames

    enr = {"q": np.array([[0.001, 0.001, 0.001]]), "log_odds": np.array([[2.0, 2.0, 2.0]])}
    ce = {"q": np.array([[0.2, 0.001, 0.01]]), "log_odds": np.array([[1.6, 0.5, np.nan]])}
    orig = frames.composition_enrichment
    frames.composition_enrichment = lambda *a, **k: ce
    try:
        out = frames._with_composition(pd.DataFrame({"x": [0, 1, 2]}), enr,
                                       {"counts": {"g": (None, None)}, "top_aa_F": None}, "g", 1)
    finally:
        frames.composition_enrichment = orig
    # q 0.2 but log odds 1.6 of 2.0 kept: not driven; log odds 0.5 (q 0.001): driven; untestable: driven
    assert out.composition_driven.tolist() == [False, True, True]


def test_grouping_coverage_note_and_kingdom_by_organism_name():
    from esmsae.app.groups import coverage_note
    from esmsae.index.taxonomy import kingdom_of

    note = coverage_note("kingdom", 2, 498)
    assert "496 of 498 indexed proteins have no kingdom" in note and "--taxonomy" in note and "--groups" in note
    assert coverage_note("kingdom", 400, 498) == ""
    assert kingdom_of(None, organism="Pyrococcus furiosus DSM 3638") == "Archaea"
    assert kingdom_of(None, organism="Homo sapiens") == "Eukaryota" and kingdom_of(272561) == "Bacteria"
    assert kingdom_of(None, organism="Unknownia obscura") == ""


def test_two_length_bin_composition_table_equals_hand_count(tmp_path):
    """The strata are length bin x composition bin: every count of a two-length-bin spill, by hand."""
    rng = np.random.default_rng(3)
    freq = np.full(20, 0.05)
    top_aa = np.array([3, 0, 7])
    sp = FiringSpill(tmp_path, ["g"])
    recs = []
    for p in range(80):
        lb, g = int(rng.integers(0, 2)), int(rng.integers(-1, 3))  # -1: the protein has no group
        aa = rng.integers(0, 12, 20)
        aa[int(rng.integers(0, 20))] += int(rng.integers(0, 40))
        feats = np.flatnonzero(rng.random(3) < 0.5).astype(np.int32)
        sp.put(lb, [g], aa, feats)
        recs.append((lb, g, aa, feats))
    (fire, prot), = composition_counts(sp, top_aa, freq, [3], 2)
    S = 2 * N_COMP
    want_fire, want_prot = np.zeros((3, S, 3), int), np.zeros((20, 3, S), int)
    for lb, g, aa, feats in recs:
        if g < 0:
            continue
        cb = composition_bins(aa[None], freq)[0]
        for a in range(20):
            want_prot[a, g, lb * N_COMP + cb[a]] += 1
        for f in feats:
            want_fire[g, lb * N_COMP + cb[top_aa[f]], f] += 1
    assert (fire == want_fire).all() and (prot == want_prot).all()
    assert fire[:, N_COMP:].sum() > 0 and fire[:, :N_COMP].sum() > 0  # both length bins are used
    sp.close()

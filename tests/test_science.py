"""Known answers and invariants of the numbers shown to biologists: concept F1 with its
controls and split, the amino-acid control, LM fidelity baselines, and the group test."""
import math

import numpy as np
import pytest
import torch

from esmsae.config import IndexConfig, ModelConfig, SAEConfig
from esmsae.core.fasta import seq_md5
from esmsae.index.concept_f1 import (
    AMINO_ACIDS,
    THRESHOLDS,
    aa_purity,
    aa_rule_f1,
    concept_counts,
    concept_layout,
    eligible,
    feature_prf,
    report,
    rule_f1,
    select,
    split_of,
    trivial_f1,
)
from esmsae.index.group_stats import enrichment, top_groups
from esmsae.index.labels import Labeled, concept_kind, is_catch_all, load_uniprot
from esmsae.index.local_rules import FAMILIES as RULE_FAMILIES
from esmsae.index.local_rules import best_in_family
from esmsae.index.protein_table import ProteinTable
from esmsae.index.proteins import Item, grouping_tsv, read_taxonomy
from esmsae.index.streaming import LATENT_BITS

AA = AMINO_ACIDS


class FakeCSR:
    """The (protein, packed residue/latent key, value) rows the index writes for labelled proteins."""

    def __init__(self, rows):
        self.rows = rows
        self.pidx = [r[0] for r in rows]

    def read(self):
        for pidx, res, feat, val in self.rows:
            yield (
                pidx,
                (np.asarray(res, np.int64) << LATENT_BITS) | np.asarray(feat, np.int64),
                np.asarray(val, np.float32),
            )


def protein_table(tmp_path, labelled=(), fasta: dict[str, str] | None = None, **kw) -> tuple[ProteinTable, list[Item]]:
    """A protein table built from FASTA texts ({file name: text}) and label records, and its proteins in pidx order."""
    files = []
    for name, text in (fasta or {}).items():
        files.append(str(tmp_path / name))
        (tmp_path / name).write_text(text)
    t = ProteinTable.build(
        IndexConfig(sae="x", out=str(tmp_path / "i.duckdb"), fasta=files, **kw), list(labelled), tmp_path / "pt"
    )
    return t, sorted(t.items(), key=lambda it: it.pidx)


def _counts(items, rows, F, names=None):
    names = names or sorted({c for it in items for lab in it.labels for c in lab.spans})
    sources = sorted({lab.source for it in items for lab in it.labels})
    src = {s: i for i, s in enumerate(sources)}
    source_of = {c: lab.source for it in items for lab in it.labels for c in lab.spans}
    lay = concept_layout(names, np.array([src[source_of[c]] for c in names]))
    halves = concept_counts(FakeCSR(rows), items, np.ones(F, np.float32), {c: i for i, c in enumerate(names)}, src, lay)
    return halves, lay, names


def _seq(rng, n):
    return "".join(rng.choice(list(AA), n))


def test_duplicated_chain_leaves_precision_unchanged(tmp_path):
    """Two chains of a homodimer (same sequence, same source) are one protein with one label
    record: the true positives are not counted twice (precision above 1 before the fix)."""
    seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"
    lab = Labeled("A", seq, "Structure", {"Structure: buried (RSA<0.2)": [(5, 20), (30, 40)]})
    rows = [(0, np.arange(0, 50), np.zeros(50, int), np.ones(50))]
    one = Item("A", seq, labels=[lab])
    t, (merged,) = protein_table(
        tmp_path,
        [lab, Labeled("B", seq, "Structure", {"Structure: buried (RSA<0.2)": [(5, 20), (30, 40)]})],
        add_labelled=True,
    )
    assert len(merged.labels) == 1 and t.report["duplicate_label_records"] == 1 and merged.id == "A"
    h1, lay, _ = _counts([one], rows, 1)
    h2, _, _ = _counts([merged], rows, 1)
    half = split_of(seq)
    for h in (h1, h2):
        p, r, _ = feature_prf(h[half], lay, 0)
        assert p[0, 0] == pytest.approx(25 / 50) and r[0, 0] == pytest.approx(25 / 25)


@pytest.mark.parametrize("seed", range(6))
def test_precision_and_recall_never_exceed_one(seed):
    """Property: random overlapping / duplicated / nested spans, unknown residues, several
    sources per protein and random activations -> 0 <= precision, recall, F1 <= 1 everywhere,
    and the amino-acid and trivial rules too."""
    rng = np.random.default_rng(seed)
    items, rows = [], []
    F = 7
    for i in range(40):
        L = int(rng.integers(30, 120))
        seq = _seq(rng, L)
        labs = []
        for src, concept in (
            ("UniProt", "UniProt: domain (X)"),
            ("FLIP SS", "FLIP SS: helix"),
            ("UniProt", "UniProt: transmembrane"),
        ):
            if rng.random() < 0.7:
                spans = []
                for _ in range(int(rng.integers(1, 5))):
                    a = int(rng.integers(0, L - 5))
                    spans.append((a, int(min(L, a + rng.integers(1, 30)))))
                spans += spans[:1]  # a duplicate span
                unknown = [(int(rng.integers(0, L // 2)), int(rng.integers(L // 2, L)))] if rng.random() < 0.5 else []
                labs.append(Labeled(f"p{i}", seq, src, {concept: spans}, unknown=unknown))
        it = Item(f"p{i}", seq)
        for lab in labs:
            from esmsae.index.proteins import add_label
            add_label(it, lab)
        if not it.labels:
            continue
        items.append(it)
        n = int(rng.integers(1, 3 * L))
        res = rng.integers(0, L, n)
        feat = rng.integers(0, F, n)
        key = np.unique(res * F + feat)
        rows.append((len(items) - 1, key // F, key % F, rng.random(len(key)) * 2))
    halves, lay, names = _counts(items, rows, F)
    for h in halves:
        for c in range(len(names)):
            p, r, f1 = feature_prf(h, lay, c)
            for x in (p, r, f1, aa_rule_f1(h, lay, c)):
                assert (x >= 0).all() and (x <= 1 + 1e-12).all()
            assert 0 <= trivial_f1(h, lay, c) <= 1
            assert (
                (h.tp[c] <= h.act[lay.source[c]]).all()
                and (h.tp[c] <= h.n_res[c]).all()
                and (h.dom[c] <= h.n_dom[c]).all()
            )
            # higher thresholds fire on fewer residues
            assert (np.diff(h.tp[c], axis=1) <= 0).all() and (np.diff(h.act[lay.source[c]], axis=1) <= 0).all()


def test_single_residue_rule_f1_equals_hand_computation():
    """Concept = residues 0-9 of each protein; the rule "fire on every L" by hand."""
    seqs = ["LLLLLAAAAAKKKKKLLLLL", "AAAAALLLLLKKKKKKKKKK", "LKLKLKLKLKAAAAAAAAAA", "KKKKKKKKKKLLLLLLLLLL"]
    items = [
        Item(f"p{i}", s, labels=[Labeled(f"p{i}", s, "FLIP SS", {"FLIP SS: helix": [(0, 10)]}, unknown=[(18, 20)])])
        for i, s in enumerate(seqs)
    ]
    halves, lay, _ = _counts(items, [(i, [0], [0], [1.0]) for i in range(4)], 1)
    for half in (0, 1):
        mine = [s for s in seqs if split_of(s) == half]
        tp = sum(s[:10].count("L") for s in mine)
        act = sum(s[:18].count("L") for s in mine)  # residues 18-19 are unknown: excluded
        n_res = 10 * len(mine)
        p, r = tp / max(act, 1), tp / max(n_res, 1)
        want = 2 * p * r / (p + r) if p + r else 0.0
        assert aa_rule_f1(halves[half], lay, 0)[AA.index("L")] == pytest.approx(want)
        cov = n_res / max(18 * len(mine), 1)
        assert trivial_f1(halves[half], lay, 0) == pytest.approx(2 * cov / (1 + cov) if cov else 0.0)


def test_selection_never_reads_test_proteins():
    """Every choice (threshold, best concept, amino-acid rule) depends on valid proteins only:
    re-drawing the activations of every test protein changes the reported F1 but none of the
    choices; the reported F1 is the test F1 at the valid-chosen threshold."""
    F = 5

    def run(redraw_test: bool):
        rng = np.random.default_rng(0)
        rng_test = np.random.default_rng(99)
        items, rows = [], []
        for i in range(60):
            s = _seq(rng, 60)
            items.append(
                Item(
                    f"p{i}",
                    s,
                    labels=[
                        Labeled(f"p{i}", s, "FLIP SS", {"FLIP SS: helix": [(10, 40)], "FLIP SS: strand": [(45, 55)]})
                    ],
                )
            )
            key = np.unique(rng.integers(0, 60, 90) * F + rng.integers(0, F, 90))
            val = rng.random(len(key))
            if redraw_test and split_of(s) == 1:
                key = np.unique(rng_test.integers(0, 60, 90) * F + rng_test.integers(0, F, 90))
                val = rng_test.random(len(key))
            rows.append((i, key // F, key % F, val))
        halves, lay, names = _counts(items, rows, F)
        ok = np.ones(len(names), bool)
        sel = select(halves[0], lay, ok)
        return halves, lay, names, sel, report(halves, lay, sel, ok, np.zeros(F))

    h1, lay, names, s1, (df1, pc1, _) = run(False)
    h2, _, _, s2, (df2, pc2, _) = run(True)
    assert (h1[1].tp != h2[1].tp).any()  # the test half did change
    assert (s1.t_CF == s2.t_CF).all() and (s1.best_c_F == s2.best_c_F).all() and (s1.aa_rule_C == s2.aa_rule_C).all()
    # each family's local rule is chosen on valid too (report() receives both halves): the same rules
    # after the re-draw, and each reported rule F1 is the test F1 of that valid-chosen rule
    assert (s1.rule_CK == s2.rule_CK).all()
    rule_cols = [f"{fam}_rule" for fam in RULE_FAMILIES] + ["local_rule", "best_baseline"]
    assert pc1[rule_cols].equals(pc2[rule_cols])
    differs = 0
    for (halves, sel, pc) in ((h1, s1, pc1), (h2, s2, pc2)):
        for c in range(len(names)):
            rf_test = rule_f1(halves[1], lay, c)
            for k, fam in enumerate(RULE_FAMILIES):
                assert pc.iloc[c][f"{fam}_f1"] == pytest.approx(rf_test[sel.rule_CK[c, k]])
                differs += int(best_in_family(rf_test)[k] != sel.rule_CK[c, k])
    assert differs, "the data must make a test-chosen rule differ from the valid-chosen one"
    assert np.allclose(s1.f1_valid_CF, s2.f1_valid_CF)
    for c, name in enumerate(names):
        _, _, f1_test = feature_prf(h1[1], lay, c)
        got = df1[df1.concept == name].set_index("feature")
        assert len(got)
        for f, r in got.iterrows():
            assert r.threshold == THRESHOLDS[s1.t_CF[c, f]] and r.f1 == pytest.approx(f1_test[f, s1.t_CF[c, f]])


def test_residue_detector_is_not_a_concept_match():
    """A feature that fires exactly on leucines, and a concept made of leucine-rich runs: the
    feature's F1 is high, but it does not beat the single-residue rule (it *is* that rule) and
    it is flagged as a residue detector, so it matches nothing."""
    rng = np.random.default_rng(1)
    items, rows = [], []
    for i in range(80):
        s = list(_seq(rng, 80))
        for j in range(20, 40):
            s[j] = "L" if rng.random() < 0.8 else s[j]
        s = "".join(s)
        items.append(Item(f"p{i}", s, labels=[Labeled(f"p{i}", s, "FLIP SS", {"FLIP SS: helix": [(20, 40)]})]))
        leu = np.array([j for j, a in enumerate(s) if a == "L"])
        rows.append((i, leu, np.zeros(len(leu), int), np.ones(len(leu))))
    halves, lay, names = _counts(items, rows, 1)
    ok = eligible(halves, lay)
    assert ok.all()
    aa_FA = np.zeros((1, 20), int)
    aa_FA[0, AA.index("L")] = 100
    pur = aa_purity(aa_FA, np.full(20, 1000))
    assert pur["aa_top"][0] == "L" and pur["aa_purity"][0] == 1.0
    sel = select(halves[0], lay, ok)
    df, per_c, best = report(halves, lay, sel, ok, pur["aa_purity"])
    assert per_c.loc[0, "aa_rule"] == "L" and df["f1"].iloc[0] == pytest.approx(per_c.loc[0, "aa_rule_f1"])
    assert not best["match"][0] and not df["beats_baselines"].any()


def test_concept_kinds_and_named_subconcepts(shared):
    d = shared / "uniprot" / "mgenitalium"
    labs = load_uniprot(d / "mgenitalium_proteins.tsv", d / "mgenitalium_features.tsv")
    names = {c for lab in labs for c in lab.spans}
    assert {
        "UniProt: binding site (ATP)",
        "UniProt: metal-binding site (Zinc)",
        "UniProt: domain (ABC transporter)",
    } <= names
    assert is_catch_all("UniProt: domain") and not is_catch_all("UniProt: domain (ABC transporter)")
    assert concept_kind("FLIP SS: helix") == "residue" and concept_kind("UniProt: binding site (ATP)") == "residue"
    assert concept_kind("TMbed: TM helix") == "domain" and concept_kind("UniProt: transmembrane") == "domain"


# ------------------------------------------------------------------ group comparison
def _length_confounded(seed=0, n=600, F=30):
    """Two groups that differ only in protein length; every feature fires on a residue with
    a fixed probability, so "fires at least once" grows with length and nothing else."""
    rng = np.random.default_rng(seed)
    grp = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    length = np.where(grp == 0, rng.integers(50, 400, n), rng.integers(200, 800, n))
    p_res = rng.uniform(0.0005, 0.005, F)
    fires = rng.random((n, F)) < 1 - (1 - p_res[None, :]) ** length[:, None]
    from esmsae.index.group_stats import length_bin, length_edges

    edges = length_edges(length, 5)
    b = np.array([length_bin(x, edges) for x in length])
    B = len(edges) + 1
    n_fire = np.zeros((2, B, F), int)
    n_prot = np.zeros((2, B), int)
    for i in range(n):
        n_fire[grp[i], b[i]] += fires[i]
        n_prot[grp[i], b[i]] += 1
    return n_fire, n_prot


def test_length_confound_cmh_finds_nothing_fisher_does():
    n_fire, n_prot = _length_confounded()
    cmh = enrichment(n_fire, n_prot, "cmh")
    fisher = enrichment(n_fire.sum(1), n_prot.sum(1), "fisher")
    assert (fisher["q"][1] < 0.05).sum() >= 10  # the long group "uses" many features: length, not biology
    assert (cmh["q"] > 0.05).all()
    assert (top_groups(["short", "long"], cmh, np.ones(n_fire.shape[2])) == "").all()


def test_cmh_finds_real_enrichment_and_min_group_size():
    n_fire, n_prot = _length_confounded(seed=1)
    n_fire[1, :, 0] = n_prot[1]  # feature 0 fires on every protein of group 1 in every length bin
    cmh = enrichment(n_fire, n_prot, "cmh", min_group_size=10)
    assert cmh["q"][1, 0] < 1e-6 and cmh["log_odds"][1, 0] > 2
    assert top_groups(["a", "b"], cmh, np.ones(n_fire.shape[2]))[0] == "b"
    small = enrichment(n_fire, n_prot, "cmh", min_group_size=10_000)
    assert not small["tested"].any() and (small["p"] == 1).all()


def test_mmseqs_cluster_tsv_assigns_members_to_representatives():
    text = "A\tA\nA\tB\nA\tC\nD\tD\nD\tE\nF\tF\n"
    assert dict(grouping_tsv(text, "clu.tsv")) == {"A": "A", "B": "A", "C": "A", "D": "D", "E": "D", "F": "F"}
    plain = "P1\tBacteria\nP2\tArchaea\n"
    assert dict(grouping_tsv(plain, "g.tsv")) == {"P1": "Bacteria", "P2": "Archaea"}


def test_taxonomy_file_gives_uniref_proteins_a_kingdom(tmp_path):
    fa = tmp_path / "u.fasta"
    fa.write_text(">UniRef90_X n=1 Tax=Escherichia coli TaxID=562 RepID=X\nMKTAYIAKQRQISFVKSHFSRQ\n"
                  ">UniRef90_Y n=1 Tax=Homo sapiens TaxID=9606 RepID=Y\nMKLLVVAAGGKKEEDD\n")
    tax = tmp_path / "tax.tsv"
    tax.write_text(
        "Taxon Id\tScientific name\tLineage\n562\tEscherichia coli\tcellular organisms, Bacteria, Pseudomonadota\n"
    )
    assert read_taxonomy(tax) == {562: "cellular organisms, Bacteria, Pseudomonadota"}
    _, items = protein_table(tmp_path, fasta={"u.fasta": fa.read_text()}, taxonomy=str(tax))
    by = {it.id: it for it in items}
    assert by["UniRef90_X"].groups.get("kingdom") == "Bacteria"
    assert by["UniRef90_Y"].groups.get("kingdom") == "Eukaryota"  # a shipped proteome taxid


def test_group_cap_keeps_a_hash_chosen_subset(tmp_path):
    groups = "".join(f"p{i}\t{'Big' if i < 50 else 'Small'}\n" for i in range(60))
    (tmp_path / "size.tsv").write_text(groups)
    kept = []
    for order in (range(60), reversed(range(60))):
        fa = "".join(f">p{i}\nM{'A' * (i + 1)}\n" for i in order)
        d = tmp_path / f"o{len(kept)}"
        d.mkdir()
        t, items = protein_table(d, fasta={"p.fasta": fa}, groups=[str(tmp_path / "size.tsv")], group_cap=20)
        assert t.report["capped_group_members"] == {"size": 30}
        assert sum(it.groups.get("size") == "Small" for it in items) == 10
        by_md5 = sorted(seq_md5(it.sequence) for it in items if it.groups.get("size") == "Big")
        assert by_md5 == sorted(seq_md5("M" + "A" * (i + 1)) for i in range(50))[:20]  # the 20 smallest hashes
        kept.append({it.id for it in items if "size" in it.groups})
    assert kept[0] == kept[1]  # order-independent


def test_protein_table_dedup_rules(tmp_path):
    """One protein per sequence: the first record's id, later records fill what it lacks and add
    their source; a taken id becomes id#pidx; labelled proteins join only with add_labelled or
    when a FASTA has them; a JSON grouping file's new protein joins; members resolved by id,
    parsed header and md5; duplicate ids in one FASTA are an error naming the file."""
    s1, s2, s3, s4 = "MKTAYIAKQR", "MKLLVVAAGG", "MSTNPKPQRK", "MDDEEKKRRL"
    fa1 = ">a desc one\n" + s1 + "\n>b\n" + s2 + "\n"
    fa2 = ">c OS=Homo sapiens OX=9606\n" + s1 + "\n>a\n" + s3 + "\n"
    (tmp_path / "g.tsv").write_text("id\tgroup\nsp|b|B_HUMAN\tX\nmd5:" + seq_md5(s3) + "\tY\nnobody\tZ\n")
    (tmp_path / "j.json").write_text('{"J": [["' + s4 + '", "new OS=Homo sapiens OX=9606"], ["' + s2 + '", "again"]]}')
    lab_in = Labeled("L1", s2, "TMbed", {"TMbed: TM helix": [(0, 5)]}, structure="x.cif", chain="A")
    lab_out = Labeled("L2", "MPPPPPPPPW", "TMbed", {"TMbed: TM helix": [(0, 5)]})
    for add_all in (False, True):
        d = tmp_path / f"t{add_all}"
        d.mkdir()
        t, items = protein_table(d, [lab_in, lab_out], fasta={"one.fasta": fa1, "two.fasta": fa2}, add_labelled=add_all,
                                 groups=[str(tmp_path / "g.tsv"), str(tmp_path / "j.json")])
        by = {it.id: it for it in items}
        assert [it.id for it in items][:3] == ["a", "b", "a#2"]
        assert by["a"].sequence == s1 and by["a"].description == "desc one" and by["a"].organism == "Homo sapiens"
        assert by["a"].taxid == 9606 and by["a"].kingdom == "Eukaryota" and by["a"].source == "one,two"
        assert by["b"].structure == "x.cif" and by["b"].chain == "A" and [lab.id for lab in by["b"].labels] == ["L1"]
        assert by["b"].groups["g"] == "X" and by["a#2"].groups["g"] == "Y" and t.report["unknown_group_ids"]["g"] == 1
        assert (
            by["new"].groups["j"] == "J"
            and by["new"].source == "j"
            and by["b"].groups["j"] == "J"
            and by["new"].kingdom == "Eukaryota"
        )
        assert ("L2" in by) == add_all and t.report["duplicate_sequences"] == 1
        assert by["a"].groups["kingdom"] == "Eukaryota" and by["a"].groups["organism"] == "Homo sapiens"
    (tmp_path / "dup.fasta").write_text(">x\nMKV\n>x\nMKA\n")
    with pytest.raises(ValueError, match="dup.fasta: duplicate record id 'x'"):
        ProteinTable.build(
            IndexConfig(sae="x", out="i.duckdb", fasta=[str(tmp_path / "dup.fasta")]), [], tmp_path / "pt2"
        )


# ------------------------------------------------------------------ LM fidelity
def test_masked_only_perplexity_equals_hand_computation():
    """A toy model whose logits ignore the input: CE at <mask> positions = mean -log p(target)
    over exactly those positions."""
    from esmsae.lm.plm import EsmTokens
    from esmsae.lm.train import heldout_ce, mask_tokens

    tok = EsmTokens()
    logp = torch.log_softmax(torch.randn(33, generator=torch.Generator().manual_seed(0)), 0)

    class Toy(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("O", (), {"logits": logp.expand(*input_ids.shape, 33).clone()})()

        def eval(self):
            return self

        def train(self, mode=True):
            return self

    ids = tok.batch(["MKTAYIAKQRQISFVKSHFSRQ" * 3, "MKLLVVAAGGKKEEDD" * 4])
    inp, chosen = mask_tokens(ids, tok, 0.3, torch.Generator().manual_seed(1))
    masked = chosen & (inp == tok.mask)
    want = float(-logp[ids[masked]].mean())
    assert heldout_ce(Toy(), ids, inp, masked, tok, "cpu") == pytest.approx(want, rel=1e-6)


def _identity_sae(d):
    from esmsae.sae.model import SAE

    sae = SAE(SAEConfig(architecture="topk", n_latents=2 * d, k=2 * d, normalize="none"), d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 0))  # [F, D], like W_dec
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_identity_splice_and_mean_ablation(esm2_dir):
    """Splicing an SAE that reconstructs exactly changes nothing (delta CE 0, 100% recovered);
    mean ablation equals filling the hooked residues with the mean by hand."""
    from esmsae.lm.plm import Hook, load_plm
    from esmsae.sae.evaluate import spliced_lm_loss

    plm = load_plm(ModelConfig(name=str(esm2_dir)))
    hook = Hook(3, "resid")
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV", "MKLLVVAAGGKKEEDDWWYYHH", "ACDEFGHIKLMNPQRSTVWY" * 2]
    sae = _identity_sae(plm.d_model)
    x = torch.randn(5, plm.d_model)
    lat = sae.encode(x)
    assert torch.allclose(sae.decode(lat.acts_BK, lat.idx_BK, x, denormalize=True), x, atol=1e-5)
    mean_D = torch.randn(plm.d_model)
    uni = np.full(plm.vocab_size, 1 / 20)
    out = spliced_lm_loss(plm, sae, hook, seqs, 0.2, 0, mean_act_D=mean_D, unigram_V=uni)
    for p in ("unmasked", "masked"):
        d = out[p]
        assert abs(d["delta_ce_nats"]) < 1e-4 and d["pct_loss_recovered"] == pytest.approx(100, abs=0.01)
        assert d["ce_unigram"] == pytest.approx(math.log(20), rel=1e-6)
    # mean ablation by hand, unmasked protocol: per-protein mean CE over residues, then the mean
    ces = []
    for s in seqs:
        ids, attn = plm.tokenize([s])
        resid = attn & (ids != plm.cls_id) & (ids != plm.eos_id)

        def fill(a, resid=resid):
            a = a.clone()
            a[resid] = mean_D.to(a)
            return a

        logits = plm.logits(ids, attn, {hook: fill})
        ces.append(float(torch.nn.functional.cross_entropy(logits[resid], ids[resid])))
    assert out["unmasked"]["ce_mean"] == pytest.approx(np.mean(ces), rel=1e-5)


def test_neighbour_model_uses_neighbours_and_nothing_else():
    """Alternating ACAC...: a masked residue is fixed by its neighbours (CE near 0); on random
    sequences the neighbour model is no better than residue frequencies."""
    from esmsae.lm.plm import EsmTokens
    from esmsae.lm.train import mask_tokens, neighbour_ce, unigram_ce

    tok = EsmTokens()
    alt = ["AC" * 60] * 50
    ids = tok.batch(alt[:10])
    inp, chosen = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    masked = chosen & (inp == tok.mask)
    assert neighbour_ce(alt, ids, inp, masked) < 0.1
    rng = np.random.default_rng(0)
    rnd = [_seq(rng, 200) for _ in range(400)]
    ids = tok.batch(rnd[:40])
    inp, chosen = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    masked = chosen & (inp == tok.mask)
    assert abs(neighbour_ce(rnd[40:], ids, inp, masked) - unigram_ce(rnd[40:], ids, masked)) < 0.05


def test_committed_demo_bundle_has_no_machine_paths():
    """demo.json, lm_eval.json, cfg.json, eval.json and the index meta table carry no absolute
    path of the machine that built them (its home cache, the shared-data location)."""
    import json
    from pathlib import Path

    import duckdb

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    texts = {str(p): p.read_text() for p in demo.rglob("*.json")}
    con = duckdb.connect(str(demo / "index.duckdb"), read_only=True)
    texts.update({f"meta:{k}": v for k, v in con.execute("SELECT key, value FROM meta").fetchall()})
    con.close()
    bad = {
        k: v[max(0, v.find(m) - 40) : v.find(m) + 60]
        for k, v in texts.items()
        for m in ('"/root', '"/home', '"/work', '"/tmp')
        if m in v
    }
    assert not bad, bad
    from esmsae.demo.bundle import portable

    assert portable(
        {"a": ["/x/y/shared/data/uniprot/f.fasta", "/root/.cache/esmsae/demo_work/index.duckdb", "rel/p", 3]},
        Path("/x/y/shared/data"),
    ) == {"a": ["shared/data/uniprot/f.fasta", "demo_work/index.duckdb", "rel/p", 3]}
    json.dumps(texts)  # all text


# ------------------------------------------------------------------ grounded descriptions
def test_descriptions_say_exactly_their_evidence():
    import json

    import pandas as pd

    from esmsae.index.describe import describe

    feats = pd.DataFrame(
        {
            "feature": [0, 1, 2, 3],
            "dead": [False, False, False, True],
            "matches_concept": [True, False, False, False],
            "best_concept": ["TMbed: TM helix", "FLIP SS: helix", "", ""],
            "best_f1": [0.71, 0.60, 0.0, 0.0],
            "best_aa_rule_f1": [0.33, 0.58, 0.0, 0.0],
            "best_trivial_f1": [0.2, 0.5, 0, 0],
            "aa_top": ["L", "L", "C", ""],
            "aa_purity": [0.3, 0.95, 0.55, 0.0],
            "n_residues": [1000, 500, 100, 0],
            "top_group": ["", "", "Archaea", ""],
            "n_nterm": [100, 50, 60, 0],
            "n_cterm": [100, 50, 0, 0],
        }
    )
    names = {
        0: ["Sodium channel OS=Homo sapiens OX=9606", "Sodium channel OS=Mus musculus OX=10090", "Porin"],
        2: ["Zinc finger protein"],
    }
    d = describe(feats, names, np.array([np.nan, np.nan, 3e-4, np.nan])).set_index("feature")
    assert (
        d.loc[0, "description"]
        == "TMbed: TM helix (test F1 0.71; single-residue rule 0.33), top proteins: Sodium channel; Porin"
    )
    # a feature that does not beat the single-residue rule gets no concept: it is named a residue detector
    assert d.loc[1, "description"] == "residue detector: 95% of its firing on L"
    assert d.loc[2, "description"] == ("mostly: 55% of its firing on C, N-terminal (60% of firing in the first tenth), "
                                       "enriched in Archaea (q 3.0e-04), top proteins: Zinc finger protein")
    assert d.loc[3, "description"].startswith("dead")
    ev = json.loads(d.loc[2, "evidence"])
    assert [e["phrase"] for e in ev] == d.loc[2, "description"].split(", ")


def test_descriptions_never_cite_a_catch_all_or_a_contig_name():
    import pandas as pd

    from esmsae.index.describe import describe

    feats = pd.DataFrame({
        "feature": [0, 1], "dead": [False, False], "matches_concept": [True, True],
        "best_concept": ["UniProt: domain", "TMbed: TM helix"], "best_f1": [0.4, 0.8], "best_aa_rule_f1": [0.1, 0.3],
        "best_local_rule_f1": [0.2, 0.7], "best_trivial_f1": [0.1, 0.2], "aa_top": ["L", "L"], "aa_purity": [0.2, 0.2],
        "n_residues": [100, 100], "top_group": ["", ""]})
    names = {0: ["Podospora anserina S mat+ genomic DNA chromosome 5, supercontig 10 OS=Podospora anserina OX=515849",
                 "Uncharacterized protein OS=Podospora anserina OX=515849"],
             1: ["Podospora anserina S mat+ genomic DNA chromosome 3, supercontig 2", "Sodium channel protein"]}
    d = describe(feats, names).set_index("feature")
    assert d.loc[0, "description"] == "no clear evidence"  # a catch-all match and locus names are no evidence
    assert (
        d.loc[1, "description"]
        == "TMbed: TM helix (test F1 0.80; best local-sequence rule 0.70, single-residue rule 0.30), "
        "top proteins: Sodium channel protein"
    )


def test_search_finds_features_whose_description_names_the_concept(built_index):
    from esmsae.index.reader import FeatureIndex

    idx = FeatureIndex(built_index[0])
    all_ = idx.features(hide_dead=False)
    for word in ("residue detector", "RIBOSOMAL"):  # a description phrase, a top protein's name
        named = set(all_.loc[all_["description"].str.contains(word, case=False, regex=False), "feature"])
        got = set(idx.features(search=word, hide_dead=False)["feature"])
        assert named and named <= got, word
    # a concept name finds the features whose concept text names it (matched, or "no match (best: ...)")
    v = idx.verdicts()
    c = v.loc[v["about"] != "", "about"]
    if len(c):
        assert set(v.loc[v["about"] == c.iloc[0], "feature"]) <= set(
            idx.features(search=c.iloc[0], hide_dead=False)["feature"]
        )
    # two words: both must occur
    both = idx.features(search="ribosomal zzzz-no-such-word", hide_dead=False)
    assert both.empty
    # a protein id of a top example finds its features
    pid = idx.q("SELECT p.id FROM top_examples e JOIN proteins p USING (pidx) ORDER BY e.max_act DESC LIMIT 1").iloc[
        0, 0
    ]
    assert len(idx.features(search=pid, hide_dead=False))


def test_aa_lookup_fvu_is_zero_when_residue_identity_is_everything(tmp_path):
    """A store whose activations are a fixed vector per residue type: the 20-entry lookup
    reconstructs it exactly (FVU 0); with noise added, its FVU is the noise share."""
    import json as _json

    import pandas as pd

    from esmsae.core.fasta import is_heldout
    from esmsae.sae.evaluate import aa_lookup_fvu
    from esmsae.store.activations import ActivationStore

    rng = np.random.default_rng(0)
    table = rng.normal(size=(20, 8))
    seqs = [_seq(rng, int(rng.integers(30, 80))) for _ in range(200)]
    lut = {a: i for i, a in enumerate(AA)}

    def build(noise, out):
        out.mkdir()
        sh = out / "shard_00000"
        sh.mkdir()
        acts, prot, pos, held, rows = [], [], [], [], []
        for i, s in enumerate(seqs):
            a = table[[lut[c] for c in s]] + noise * rng.normal(size=(len(s), 8))
            acts.append(a)
            prot += [i] * len(s)
            pos += list(range(len(s)))
            ho = is_heldout(s, 0.3)
            held += [ho] * len(s)
            rows.append(
                {
                    "pidx": i,
                    "id": f"p{i}",
                    "description": "",
                    "organism": "",
                    "taxid": -1,
                    "length": len(s),
                    "sequence": s,
                    "md5": "",
                    "split": "heldout" if ho else "train",
                }
            )
        A = np.concatenate(acts).astype(np.float16)
        np.save(sh / "L1_resid.npy", A)
        np.save(sh / "protein.npy", np.array(prot, np.int32))
        np.save(sh / "position.npy", np.array(pos, np.int32))
        np.save(sh / "heldout.npy", np.array(held))
        pd.DataFrame(rows).to_parquet(sh / "proteins.parquet", index=False)
        man = {
            "version": 1,
            "model": {"name": "x"},
            "model_info": {"name": "x", "family": "esm2", "n_layers": 2, "d_model": 8},
            "hooks": {"layers": [1], "site": "resid"},
            "hook_names": ["L1_resid"],
            "d_in": 8,
            "embed": {"holdout_fraction": 0.3, "pool": "none"},
            "provenance": {"fasta": {}},
            "shards": [
                {
                    "name": "shard_00000",
                    "n_tokens": len(A),
                    "n_train_tokens": int((~np.array(held)).sum()),
                    "n_heldout_tokens": int(np.sum(held)),
                    "first_protein": 0,
                    "n_proteins": len(seqs),
                }
            ],
            "n_proteins": len(seqs),
            "n_tokens": len(A),
            "complete": True,
        }
        (out / "manifest.json").write_text(_json.dumps(man))
        return ActivationStore(out)

    exact = aa_lookup_fvu(build(0.0, tmp_path / "a"), "L1_resid", 10**6)
    assert exact["fvu"] < 1e-5  # fp16 rounding only
    noisy = aa_lookup_fvu(build(0.5, tmp_path / "b"), "L1_resid", 10**6)
    want = 0.25 * 8 / (0.25 * 8 + table.var(0).sum())  # noise variance share of the total
    assert noisy["fvu"] == pytest.approx(want, rel=0.15)


def test_overview_names_the_demo_lm_against_its_baselines():
    """The overview's one line on the demo LM: UniRep, what h_t has seen, its next-residue perplexity next
    to the bigram and the unigram on the same held-out proteins (from the bundle's lm_eval.json), and the
    bundle says it is GPL-3.0 (NOTICE)."""
    import json
    from pathlib import Path

    from esmsae.index.reader import FeatureIndex

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    idx = FeatureIndex(demo / "index.duckdb")
    ev = json.loads((demo / "lm_eval.json").read_text())
    facts = idx.lm_eval()  # what the Overview's LM line is written from (tests/test_app.py checks the line)
    assert facts["objective"] == "causal" and facts["about"].startswith("UniRep") and "residues 1..t" in facts["about"]
    assert (facts["next_ppl"], facts["bigram_ppl"], facts["unigram_ppl"]) == (
        ev["next_ppl"], ev["bigram_ppl"], ev["unigram_ppl"])
    assert ev["next_ppl"] < ev["bigram_ppl"] < ev["unigram_ppl"]
    assert "GNU General Public License v3.0" in (demo / "NOTICE").read_text()
    assert not (demo / "model").exists()  # the weights are read from the installed package, never copied

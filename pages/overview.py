"""Overview: the run card, frequency histogram and the feature map."""
import streamlit as st

from esmsae.app.concepts import RULE_TEXT, card_sections, found_table
from esmsae.app.render import feature_map, freq_histogram, lm_curve_figure
from esmsae.app.ui import cached, ensure_navigation, feature_query, pick_run, require_index


def precision_note(encode_dtype: str) -> str:
    """One line when the index encoded with a bf16 SAE matmul: its values are not the inspector's (fp32)."""
    if encode_dtype == "float32":
        return ""
    return (
        "This index ran the SAE encoder's matmul in bfloat16 (--encode-dtype bfloat16). The sequence inspector"
        " encodes in float32, so its activations can differ from the index's by about 0.2% (median of per-feature"
        " maxima on the demo), and a latent at a residue's top-k boundary can change (0.1% of latents;"
        " bench/encode_precision.py)."
    )


def lm_note(ev: dict) -> str:
    """What the protein LM is, its own perplexity next to its baselines, and real ESM-2 for scale."""
    if not ev:
        return ""
    if ev["objective"] == "causal":
        return (
            f"Protein LM: {ev.get('about', ev.get('model', ''))} Next-residue perplexity on {ev['n_proteins']}"
            f" held-out UniProtKB proteins: {ev['next_ppl']:.2f}, against {ev['bigram_ppl']:.2f} for a bigram"
            f" (the residue before) and {ev['unigram_ppl']:.2f} for residue frequencies alone."
        )
    tokens = ev.get("tokens_total", ev.get("tokens_seen", 0))
    return (
        f"Protein LM: the ESM-2 8M architecture trained by esmsae on {tokens / 1e6:.0f} M tokens of the shared proteins"
        f" (CPU). Held-out <mask> perplexity {ev['masked_ppl']:.2f} vs {ev['masked_unigram_ppl']:.2f} for residue"
        " frequencies alone; real ESM-2 8M reaches about 10-10.5 (reported), so this model knows far less about"
        " proteins."
    )


ensure_navigation()
run = pick_run()
idx = require_index(run)
st.title("esmsae: sparse autoencoder features of protein language models")
st.caption(f"Run **{run.name}** - checkpoint `{run.sae_dir}`")
if precision_note(idx.encode_dtype()):
    st.caption(precision_note(idx.encode_dtype()))
if lm_note(idx.lm_eval()):
    st.info(lm_note(idx.lm_eval()))
    curve = idx.lm_curve()
    if not curve.empty:
        with st.expander("Protein LM training curve"):
            st.plotly_chart(lm_curve_figure(curve), key="lm_curve")
rep = idx.representation()
if not rep.empty:
    with st.expander("Representation card: does this model know more than local sequence?", expanded=False):
        st.dataframe(
            rep.rename(
                columns={
                    "value": "test score",
                    "minus_window10": "minus the +-10 window",
                    "minus_window20": "minus the +-20 window",
                    "n_train_proteins": "train proteins",
                    "n_test_proteins": "test proteins",
                }
            ),
            hide_index=True,
            key="rep_card",
        )
        fit_text = ("logistic regression fitted to convergence" if "fit_loss" in rep
                    else "logistic regression, 300 Adam epochs: a card from before the converged fit")
        st.caption(
            f"Linear probes per residue ({fit_text}), trained and tested on different"
            " proteins (TMbed's homology partitions for TM helices, signal peptides and topology within membrane"
            " proteins, a sequence-hash split for secondary structure). The one-hot windows are the controls: a"
            " representation knows more than local sequence where it beats the +-20 window. 'SAE codes: best k"
            " features' are k-sparse probes: what a few single features carry of what the LM state knows."
        )
ext = idx.external()
if not ext.empty:
    with st.expander("External check: frozen choices on a benchmark no choice saw", expanded=False):
        st.dataframe(ext.drop(columns=["set"]), hide_index=True, key="external")
        st.caption(f"{ext['set'].iloc[0]}: each predictor (features, the local rule and the learned windows, at the"
                   " thresholds chosen on this index's validation proteins) calls a fragment positive when it fires"
                   " on any residue.")
pc = idx.protein_concepts()
if not pc.empty:
    with st.expander("Protein-level concepts: fold classes, folds and protein families, tested per protein",
                     expanded=False):
        st.dataframe(pc, hide_index=True, key="protein_concepts")
        st.caption("A feature calls a protein a member of the class or fold when its maximum over the protein"
                   " exceeds a threshold (chosen on validation proteins); the baselines are logistic models of the"
                   " amino-acid composition and length, and of dipeptide composition, and a learned filter of the"
                   " one-hot +-10 / +-20 window maximised over the protein (window10 / window20: what local"
                   " sequence tells, pooled as the feature is), all fitted on separate proteins."
                   " 'match': ahead of them and of fire-everywhere by 0.05 on validation and test, with the"
                   " bootstrap interval above 0. Families (UniProt names) also face their classic motif and are"
                   " tested on organisms no choice saw. Fold test"
                   " domains come from superfamilies held out of the choices (TAPE's remote-homology split).")
card = idx.card()
verdicts = idx.verdicts()
for title, keys in card_sections(card, verdicts, idx.meta.get("eval")):
    st.markdown(f"**{title}**")
    cols = st.columns(len(keys))
    for col, (label, value, why) in zip(cols, keys):
        col.metric(label, value, help=why)
found = found_table(verdicts)
st.markdown("**What was found: the concepts a feature matches, each with its best feature (chosen on validation"
            " proteins) and the baseline that came closest**")
st.dataframe(found, hide_index=True, key="found_table", width="stretch")
st.caption(
    f"{RULE_TEXT} {len(idx.eligible_concepts()) - len(found)} other eligible concepts are matched"
    " by no feature (every concept, with all its baselines, is in the table below the map)."
)
left, right = st.columns([1, 2])
with left:
    st.plotly_chart(cached(idx, "freq_hist", lambda: freq_histogram(idx.features(hide_dead=False))), key="freq_hist")
    with st.expander("Every concept: the best feature against every baseline"):
        st.dataframe(idx.concept_summary().head(60), hide_index=True, key="concept_summary")
with right:
    color = st.radio("Colour by", ["matched concept", "frequency", "cluster", "dead"], horizontal=True,
                     key="map_color", help="matched concept: the concept a feature matches (grey: none); cluster:"
                                           " k-means of the decoder directions; dead: never fired on the indexed"
                                           " proteins")
    ev = st.plotly_chart(
        cached(idx, "feature_map", lambda c: feature_map(idx.feature_points(), c),
               {"matched concept": "concept"}.get(color, color)),
        key="fmap",
        on_select="rerun",
        selection_mode="points",
    )
    pts = (ev.selection.points if ev and hasattr(ev, "selection") else []) or []
    if pts:
        f = int(pts[0]["customdata"][0])
        st.switch_page("pages/features.py", query_params=feature_query(f, run))
    st.caption("Select a point to open that feature.")

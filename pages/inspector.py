"""Sequence inspector: paste a sequence / FASTA or upload a structure; see its features."""
import numpy as np
import pandas as pd
import streamlit as st

from esmsae.analysis.steer import EDITS, WHERE, Edit, perplexity_name
from esmsae.app.analyze import MAX_PAGE_SECONDS, InputError, generate_in_app, parse_input, steer_in_app
from esmsae.app.concepts import concept_columns
from esmsae.app.render import (
    StructureError,
    chain_breaks,
    format_number,
    heatmap,
    parse_structure,
    steer_figure,
    structure_html,
    track_html,
    truncation_warnings,
)
from esmsae.app.ui import analyzer_of, ensure_navigation, feature_link, feature_url, index_of, pick_run, table


def _cancel() -> None:
    job = st.session_state.pop("inspect_job", None)
    if job is not None:
        job.cancelled.set()  # the forward stops within a few dozen residues
    st.session_state.pop("inspect", None)
    st.session_state["inspect_cancelled"] = True


def analyse(an, run_name: str, name: str, seq: str):
    """The analysis of one record, kept for the session (a widget change does not run it again); a long one
    in the background with progress, an estimate and a Cancel button; past about a minute of work, refused
    with the command to use instead."""
    key = (run_name, name, seq)
    done = st.session_state.get("inspect_result")
    if done and done[0] == key:
        return done[1]
    est = an.estimate_s(len(seq))
    if est > MAX_PAGE_SECONDS and an.rate is None:  # judged by a guess: measure this model here first
        with st.spinner("Measuring this model's speed on this machine ..."):
            an.calibrate()
        est = an.estimate_s(len(seq))
    if est > MAX_PAGE_SECONDS:
        st.error(
            f"{name} has {len(seq):,} residues: about {est:.0f} s of work on this machine, more than the page does"
            f" (up to about {an.max_residues():,} residues). Run it from the command line, e.g. `esmsae embed"
            f" --model {an.meta.get('base_model', {}).get('name', 'MODEL')} --layers {an.hook.layer} --fasta"
            " protein.fasta --store out/`, or in Python: `esmsae.load_model(...).embed(sequence, layer=...)`."
        )
        st.stop()
    job = st.session_state.get("inspect_job")
    if job is None or job.key != key:  # a rerun while it runs (another widget) follows the same job
        if job is not None:
            job.cancelled.set()
        job = an.submit(name, seq)
        job.key = key
        st.session_state["inspect_job"] = job
    bar = st.progress(0.0, text=job.status()[1])
    st.button("Cancel", key="inspect_cancel", on_click=_cancel,
              help="stops waiting; the model finishes the protein it has begun in the background")
    while not job.done.wait(0.25):
        bar.progress(*job.status())
    bar.empty()
    st.session_state.pop("inspect_job", None)
    if job.error is not None:
        st.error(f"Could not run the protein LM + SAE of run {run_name} on {name}: {job.error}")
        st.stop()
    st.session_state["inspect_result"] = (key, job.result)
    st.rerun()  # draw the page without the progress bar and the Cancel button


ensure_navigation()
run = pick_run()
if run is None:
    st.stop()
st.title("Sequence inspector")
idx = index_of(run)
text = st.text_area("Protein sequence or FASTA", height=120, key="seq_text",
                    placeholder=">my_protein\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVPALL")
up = st.file_uploader(
    "...or a structure (PDB / mmCIF): its sequence is read from the atoms",
    type=["pdb", "cif", "mmcif", "ent"],
    key="struct_up",
)
go = st.button("Analyse", type="primary")

if go:
    st.session_state.pop("inspect", None)
    st.session_state.pop("inspect_cancelled", None)
    if up is not None and text.strip():
        st.info(f"Both a paste and an uploaded structure are present: the structure {up.name} is analysed "
                "(remove the upload to analyse the paste).")
    try:
        if up is not None:
            fmt = "cif" if up.name.lower().endswith(("cif", "mmcif")) else "pdb"
            raw = up.getvalue().decode("utf-8", errors="replace")
            chains = parse_structure(raw, fmt)
            cut = truncation_warnings(raw, fmt, chains)
            if cut:
                st.warning(
                    f"{up.name} looks truncated: "
                    + "; ".join(cut)
                    + ". Only the residues with atoms are analysed; upload the whole file to analyse the whole protein."
                )
            st.session_state["inspect"] = {
                "structure": (raw, fmt, chains),
                "records": [(f"{up.name} chain {c}", s) for c, (s, _) in chains.items()],
            }
        else:
            st.session_state["inspect"] = {"structure": None, "records": parse_input(text)}
    except (InputError, StructureError) as e:
        st.error(str(e))

if st.session_state.pop("inspect_cancelled", False):
    st.info("Analysis cancelled.")
state = st.session_state.get("inspect")
if state:
    records = state["records"]
    names = [n for n, _ in records]
    pick = st.selectbox("Sequence", names, key="inspect_pick") if len(names) > 1 else names[0]
    name, seq = records[names.index(pick)]
    try:
        an = analyzer_of(run)
    except Exception as e:  # model files missing or unreadable: a message, not a traceback
        st.error(f"Could not load the protein LM + SAE of run {run.name}: {e}")
        st.stop()
    res = analyse(an, run.name, name, seq)
    st.caption(f"{len(seq)} residues - protein LM + SAE in {res.seconds * 1000:.0f} ms")
    if getattr(an.plm, "objective", "mlm") == "causal":
        st.caption(
            f"{an.plm.name} reads left to right: the activation at residue t comes from a state that has seen residues"
            " 1..t only, never what follows. A feature that marks the start of a segment can only fire once the"
            " segment has begun."
        )
    top = res.top_features(20)
    if top.empty:
        st.warning("No feature fires on this sequence.")
        st.stop()
    if idx is not None:  # one rule: a concept is named only where the feature matches it (index/verdicts.py)
        top = concept_columns(top, idx.verdicts(), idx.labels())
    # one below the other: side by side, the table's seven columns were cut at the column's edge
    st.markdown("**Features that fire most**")
    top["page"] = [feature_url(f, run) for f in top["feature"]]
    table(top.rename(columns={"page": "feature page", "n_residues": "residues where it fires"}), key="top_feats",
          link={"feature page": "open"})
    about = top.set_index("feature")["verdict"] if "verdict" in top else {}
    for f in top["feature"].head(5):
        feature_link(int(f), run, about.get(f, ""))
    m = pd.DataFrame(
        res.dense(top["feature"].tolist()).T,
        index=[f"f{f}" for f in top["feature"]],
        columns=[f"{a}{i + 1}" for i, a in enumerate(seq)],
    )
    st.plotly_chart(heatmap(m, "Residues x top features", xlab="residue", ylab="feature"), key="inspect_heat")
    f = st.selectbox("Feature track", top["feature"].tolist(), key="inspect_feature")
    pos, vals = res.track(int(f))
    st.html(track_html(seq, pos, vals, float(vals.max()) if len(vals) else 1.0, title=f"feature {f} on {name}"))
    if state["structure"] is not None:
        raw, fmt, chains = state["structure"]
        chain = name.rsplit(" chain ", 1)[-1]
        cseq, resi = chains[chain]
        gaps = chain_breaks(resi)
        if gaps:
            st.warning(
                f"Chain {chain} has {len(gaps)} break(s) (missing residues after residue"
                f" {', '.join(map(str, gaps[:10]))}{'...' if len(gaps) > 10 else ''}): the sequence analysed joins the"
                " modelled pieces."
            )
        dense = np.zeros(len(cseq))
        dense[pos] = vals
        st.iframe(structure_html(raw, fmt, chain, resi, dense, float(vals.max()) if len(vals) else 1.0), height=440)
    st.download_button(
        "Download activations (CSV)",
        res.to_csv(),
        file_name=f"{name.replace(' ', '_')}_activations.csv",
        mime="text/csv",
    )

    st.subheader("Steer along a feature, checked")
    st.caption(
        "The edit replaces the hooked activation by decode(edited features) + reconstruction error (an empty edit"
        " changes nothing); the steered sequence is the argmax over the 20 amino acids; the check re-embeds it with the"
        " unmodified model."
    )
    with st.form("steer_form"):
        s1, s2, s3, s4 = st.columns(4)
        sf = s1.number_input("Feature", 0, an.sae.cfg.n_latents - 1, int(top["feature"].iloc[0]), key="steer_feature")
        kind = s2.selectbox(
            "Edit",
            EDITS,
            key="steer_kind",
            help=(
                "clamp: set to the value; scale: multiply; ablate: remove; "
                "interprot: InterProt's endpoint (global max of the pre-activations x multiplier)"
            ),
        )
        value = s3.number_input("Value / factor / multiplier", value=5.0, key="steer_value")
        where = s4.selectbox("Where", WHERE, key="steer_where")
        r1, r2 = st.columns(2)
        start = r1.number_input("Range start (residue, 1-based)", 1, len(seq), 1, key="steer_start")
        end = r2.number_input("Range end (inclusive)", 1, len(seq), len(seq), key="steer_end")
        go_steer = st.form_submit_button("Steer")
    if go_steer:
        try:
            edit = Edit(int(sf), kind, float(value), where, int(start) - 1, int(end))
            with st.spinner("Steering, then re-embedding the steered sequence..."):
                st.session_state["steer"] = (name, seq, steer_in_app(an, seq, edit), edit)
        except ValueError as e:
            st.error(f"Cannot steer: {e}")
    got = st.session_state.get("steer")
    if got and got[0] == name and got[1] == seq:
        r = got[2]
        sm = r.summary()
        k = st.columns(4)
        k[0].metric(
            "Target fires on the steered sequence",
            "yes" if sm["fires_after"] else "no",
            help=(
                f"max {format_number(sm['target_max_after'])} after vs {format_number(sm['target_max_before'])} on the"
                " original"
            ),
        )
        k[1].metric("Residues changed", f"{sm['residues_changed']} / {sm['length']}")
        pname = perplexity_name(an.plm).capitalize()
        k[2].metric(
            f"{pname}, original",
            format_number(sm["pppl_original"]) if sm["pppl_original"] is not None else "not computed",
        )
        k[3].metric(
            "...with the edit held",
            format_number(sm["pppl_steered"]) if sm["pppl_steered"] is not None else "not computed",
        )
        if sm["degenerate"]:
            st.warning(
                "The steered sequence looks degenerate: "
                + "; ".join(sm["degenerate"])
                + ". The edit pushes the model off real proteins; try a smaller value or another feature."
            )
        st.code(r.steered_sequence, language=None)
        st.html(
            track_html(
                r.steered_sequence,
                np.flatnonzero(r.target_after_L > 0),
                r.target_after_L[r.target_after_L > 0],
                float(max(r.target_after_L.max(initial=0), 1e-9)),
                title=f"feature {r.target} on the steered sequence (re-embedded)",
            )
        )
        st.plotly_chart(steer_figure(r.delta_logprob_L20, seq, r.target), key="steer_heat")
        st.markdown("**Other features that moved most** (mean activation, steered minus original)")
        st.dataframe(pd.DataFrame(sm["moved"]), hide_index=True, key="steer_moved")
        st.download_button("Download the steered sequence (FASTA)", r.fasta(f"{name.split()[0]}_steered_f{r.target}"),
                           file_name=f"steered_f{r.target}.fasta", mime="text/plain")

        causal = getattr(an.plm, "objective", "mlm") == "causal"
        st.markdown(
            "**Generate designs with this edit held** ("
            + (
                "left-to-right resampling for this causal LM: each round picks a fraction of positions and resamples"
                " them in order, each from the steered model's next-residue distribution given the residues before it"
                if causal
                else (
                    "plm-sae's iterative masked resampling: each round masks a fraction of "
                    "positions and samples them from the steered model"
                )
            )
            + "; each design is then re-embedded by the unmodified model to check whether the feature fires without the"
            " edit). Seeded: the same settings give the same designs."
        )
        with st.form("generate_form"):
            g = st.columns(6)
            n_designs = g[0].number_input("Designs", 1, 32, 4, key="gen_n")
            rounds = g[1].number_input("Rounds", 0, 50, 5, key="gen_rounds")
            mask_frac = g[2].number_input("Masked per round", 0.01, 1.0, 0.15, step=0.05, key="gen_mask")
            temperature = g[3].number_input("Temperature", 0.05, 5.0, 1.0, step=0.1, key="gen_temp")
            gseed = g[4].number_input("Seed", 0, 2**31 - 1, 0, key="gen_seed")
            with_pppl = g[5].checkbox(
                "Perplexity",
                False,
                key="gen_pppl",
                help="one forward per residue of each design (slow on long sequences)",
            )
            go_gen = st.form_submit_button("Generate")
        if go_gen:
            try:
                with st.spinner("Generating designs, then re-embedding each with the unmodified model..."):
                    st.session_state["designs"] = (
                        name,
                        seq,
                        r.target,
                        generate_in_app(
                            an,
                            seq,
                            got[3],
                            int(n_designs),
                            int(rounds),
                            float(mask_frac),
                            float(temperature),
                            int(gseed),
                            bool(with_pppl),
                        ),
                    )
            except ValueError as e:
                st.error(f"Cannot generate: {e}")
        gd = st.session_state.get("designs")
        if gd and gd[0] == name and gd[1] == seq and gd[2] == r.target:
            d = gd[3]
            ds = d.summary()
            m = st.columns(4)
            m[0].metric("Designs in which the feature fires", f"{sum(d.fires)} / {len(d.sequences)}",
                        help="the design re-embedded by the unmodified model, no edit")
            m[1].metric("Mean identity to the seed", f"{ds['mean_identity_to_seed']:.1%}")
            m[2].metric(
                "Mean perplexity",
                format_number(ds["mean_pppl"]) if ds["mean_pppl"] is not None else "not computed",
                help=perplexity_name(an.plm) + " under the unmodified model",
            )
            m[3].metric(
                "Degenerate designs",
                f"{ds['n_degenerate']} / {len(d.sequences)}",
                help=(
                    "low complexity, a long homopolymer run, under 30% identity to the seed, or perplexity over 2x the"
                    " seed's"
                ),
            )
            st.dataframe(d.table(), hide_index=True, key="designs_table")
            st.download_button("Download the designs (FASTA)", d.fasta(f"{name.split()[0]}_f{d.target}"),
                               file_name=f"designs_f{d.target}.fasta", mime="text/plain")

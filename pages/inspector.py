"""Sequence inspector: paste a sequence / FASTA or upload a structure; see its features."""
import numpy as np
import pandas as pd
import streamlit as st

from esmsae.analyze import InputError, parse_input
from esmsae.render import StructureError, chain_breaks, heatmap, parse_structure, structure_html, track_html
from esmsae.ui import analyzer_of, feature_link, feature_url, index_of, pick_run

run = pick_run()
if run is None:
    st.stop()
st.title("Sequence inspector")
idx = index_of(run)
text = st.text_area("Protein sequence or FASTA", height=120, key="seq_text",
                    placeholder=">my_protein\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVPALL")
up = st.file_uploader("...or a structure (PDB / mmCIF): its sequence is read from the atoms", type=["pdb", "cif", "mmcif", "ent"], key="struct_up")
go = st.button("Analyse", type="primary")

if go:
    st.session_state.pop("inspect", None)
    if up is not None and text.strip():
        st.info(f"Both a paste and an uploaded structure are present: the structure {up.name} is analysed "
                "(remove the upload to analyse the paste).")
    try:
        if up is not None:
            fmt = "cif" if up.name.lower().endswith(("cif", "mmcif")) else "pdb"
            raw = up.getvalue().decode("utf-8", errors="replace")
            chains = parse_structure(raw, fmt)
            st.session_state["inspect"] = {"structure": (raw, fmt, chains), "records": [(f"{up.name} chain {c}", s) for c, (s, _) in chains.items()]}
        else:
            st.session_state["inspect"] = {"structure": None, "records": parse_input(text)}
    except (InputError, StructureError) as e:
        st.error(str(e))

state = st.session_state.get("inspect")
if state:
    records = state["records"]
    names = [n for n, _ in records]
    pick = st.selectbox("Sequence", names, key="inspect_pick") if len(names) > 1 else names[0]
    name, seq = records[names.index(pick)]
    try:
        an = analyzer_of(run)
        res = an.run(name, seq)
    except Exception as e:  # model files missing or unreadable: a message, not a traceback
        st.error(f"Could not run the protein LM + SAE of run {run.name}: {e}")
        st.stop()
    st.caption(f"{len(seq)} residues - protein LM + SAE in {res.seconds * 1000:.0f} ms")
    top = res.top_features(20)
    if top.empty:
        st.warning("No feature fires on this sequence.")
        st.stop()
    if idx is not None:
        feats = idx.features(hide_dead=False).set_index("feature")
        top["label"] = top["feature"].map(feats["label"]).fillna("")
        top["best_concept"] = top["feature"].map(feats["best_concept"]).fillna("")
    c1, c2 = st.columns([2, 3])
    with c1:
        st.markdown("**Features that fire most**")
        top["page"] = [feature_url(f, run) for f in top["feature"]]
        st.dataframe(top, hide_index=True, key="top_feats",
                     column_config={"page": st.column_config.LinkColumn("feature page", display_text="open")})
        for f in top["feature"].head(5):
            feature_link(int(f), run)
    with c2:
        m = pd.DataFrame(res.dense(top["feature"].tolist()).T, index=[f"f{f}" for f in top["feature"]], columns=[f"{a}{i + 1}" for i, a in enumerate(seq)])
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
            st.warning(f"Chain {chain} has {len(gaps)} break(s) (missing residues after residue "
                       f"{', '.join(map(str, gaps[:10]))}{'...' if len(gaps) > 10 else ''}): the sequence analysed joins the modelled pieces.")
        dense = np.zeros(len(cseq))
        dense[pos] = vals
        st.iframe(structure_html(raw, fmt, chain, resi, dense, float(vals.max()) if len(vals) else 1.0), height=440)
    st.download_button("Download activations (CSV)", res.to_csv(), file_name=f"{name.replace(' ', '_')}_activations.csv", mime="text/csv")

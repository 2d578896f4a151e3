"""Overview: the run card, frequency histogram and the feature map."""
import pandas as pd
import streamlit as st

from esmsae.render import feature_map, format_number, freq_histogram
from esmsae.ui import feature_query, pick_run, require_index

run = pick_run()
idx = require_index(run)
st.title("esmsae: sparse autoencoder features of protein language models")
st.caption(f"Run **{run.name}** - checkpoint `{run.sae_dir}`")
card = idx.card()
cols = st.columns(6)
for i, (k, v) in enumerate(card.items()):
    cols[i % 6].metric(k, format_number(v))
left, right = st.columns([1, 2])
feats = idx.features(hide_dead=False)
with left:
    st.plotly_chart(freq_histogram(feats), key="freq_hist")
    st.markdown("**Most common concepts (F1 > 0.5)**")
    best = feats[feats.best_f1 > 0.5].groupby("best_concept").size().sort_values(ascending=False).head(12)
    st.dataframe(pd.DataFrame({"concept": best.index, "features": best.values}), hide_index=True)
with right:
    color = st.radio("Colour by", ["best concept", "frequency", "cluster", "dead"], horizontal=True, key="map_color",
                     help="cluster: k-means of the decoder directions; dead: never fired on the indexed proteins")
    ev = st.plotly_chart(feature_map(idx, {"best concept": "best_concept"}.get(color, color)), key="fmap", on_select="rerun",
                         selection_mode="points")
    pts = (ev.selection.points if ev and hasattr(ev, "selection") else []) or []
    if pts:
        f = int(pts[0]["customdata"][0])
        st.switch_page("pages/features.py", query_params=feature_query(f, run))
    st.caption("Select a point to open that feature.")

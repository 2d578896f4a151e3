"""Group comparison: feature usage across taxonomic (or user) groups, with enrichment."""
import streamlit as st

from esmsae.explore import heatmap
from esmsae.ui import pick_run, require_index

run = pick_run()
idx = require_index(run)
st.title("Group comparison")
gs = idx.groupings()
if not gs:
    st.info("This index has no groupings (add --groups files or proteins with taxonomy when building it).")
    st.stop()
g = st.selectbox("Grouping", gs, index=gs.index("kingdom") if "kingdom" in gs else 0, key="grouping")
sizes = idx.q("SELECT grp, n_proteins FROM groups WHERE grouping = ? ORDER BY n_proteins DESC", [g])
st.caption(" - ".join(f"{r.grp}: {r.n_proteins} proteins" for r in sizes.head(20).itertuples()))
value = st.radio("Heatmap value", ["frac", "mean_act"], horizontal=True, key="heat_value",
                 format_func={"frac": "fraction of proteins where it fires", "mean_act": "mean of per-protein max activation"}.get)
m = idx.group_heatmap(g, 40, value)
if not m.empty:
    st.plotly_chart(heatmap(m.head(30), f"Most group-specific features by {g}", ylab=g), key="group_heat")
groups = sizes["grp"].tolist()
grp = st.selectbox("Most enriched features in group", groups, key="enriched_group")
enr = idx.enriched(g, grp)
st.caption("One-sided Fisher's exact test against all other groups, Benjamini-Hochberg FDR (q); effect size = log odds ratio.")
st.dataframe(enr, hide_index=True, key="enriched_table")
if len(groups) >= 2:
    st.subheader("Two groups side by side")
    a, b = st.columns(2)
    ga = a.selectbox("Group A", groups, index=0, key="ga")
    gb = b.selectbox("Group B", groups, index=1, key="gb")
    st.dataframe(idx.compare(g, ga, gb), hide_index=True, key="compare_table")

"""Group comparison: feature usage across taxonomic (or user) groups, with enrichment."""
import hashlib

import streamlit as st

from esmsae.app.analyze import InputError
from esmsae.app.group_upload import MIN_GROUP_SIZE as MIN_GROUP
from esmsae.app.group_upload import group_usage, read_uploaded_grouping
from esmsae.app.groups import compare, coverage_note, enriched, group_heatmap, testability_note
from esmsae.app.render import heatmap
from esmsae.app.ui import analyzer_of, ensure_navigation, pick_run, require_index, table


def group_test_note(t: dict) -> str:
    """One line on how the index tested enrichment."""
    if t["test"] == "cmh":
        return (
            f"One-sided Cochran-Mantel-Haenszel test over {t['length_bins']} protein-length bins (firing grows with"
            " length) against all other groups; effect size = Mantel-Haenszel log odds ratio; Benjamini-Hochberg FDR"
            f" (q). Groups under {t['min_group_size']} proteins are not tested."
        )
    return (
        "One-sided Fisher's exact test against all other groups (not controlled for protein length),"
        " Benjamini-Hochberg FDR (q); effect size = log odds ratio."
    )

ensure_navigation()
run = pick_run()
idx = require_index(run)
st.title("Group comparison")
source = st.radio("Grouping", ["from the index", "upload a grouping file"], horizontal=True, key="group_source")
usage = None
if source == "from the index":
    gs = idx.groupings()
    if not gs:
        st.info("This index has no groupings (add --groups files or proteins with taxonomy when building it).")
        st.stop()
    g = st.selectbox("Grouping", gs, index=gs.index("kingdom") if "kingdom" in gs else 0, key="grouping")
    usage = idx.group_usage(g)
    note = coverage_note(g, *idx.group_coverage(g))
    if note:
        st.warning(note)
    if g == "embedding cluster":
        prof = idx.cluster_profiles()
        if not prof.empty:
            st.markdown(
                "**What each cluster holds** (k-means of the proteins' mean-pooled LM embeddings at the SAE's layer)"
            )
            st.dataframe(prof, hide_index=True, key="cluster_profiles")
            st.caption("Described, not tested: the clusters are made of the same LM states the SAE encodes, so a"
                       " feature over-used in one is expected by construction (no p or q is shown for them).")
else:
    g = "uploaded"
    up = st.file_uploader(
        "TSV (protein id <TAB> group, ids from this index) or JSON {group: [[sequence, header], ...]}",
        type=["tsv", "txt", "json"],
        key="group_upload",
    )
    if up is None:
        st.stop()
    key = hashlib.md5(up.getvalue()).hexdigest()
    if st.session_state.get("group_upload_key") != key:
        try:
            groups, unknown = read_uploaded_grouping(up.name, up.getvalue(), idx.sequences)
        except (InputError, ValueError, UnicodeDecodeError) as e:  # a broken file: say what is wrong with it
            st.error(f"{up.name}: {e}")
            st.stop()
        with st.spinner(f"Running the protein LM + SAE on {sum(map(len, groups.values()))} proteins..."):
            try:
                st.session_state["group_upload_usage"] = group_usage(analyzer_of(run), groups)
            except (ValueError, OSError) as e:
                st.error(f"Could not compute feature usage for {up.name}: {e}")
                st.stop()
        st.session_state["group_upload_key"] = key
        st.session_state["group_upload_unknown"] = unknown
    usage = st.session_state["group_upload_usage"]
    if st.session_state.get("group_upload_unknown"):
        st.warning(
            f"{st.session_state['group_upload_unknown']} ids in the file are not in this index and were skipped."
        )

sizes = usage.groupby("grp")["n_proteins"].first().sort_values(ascending=False)
st.caption(" - ".join(f"{k}: {v} proteins" for k, v in sizes.head(20).items()))
if testability_note(sizes, MIN_GROUP):  # why the heatmap is thin and the tables empty, instead of silence
    st.warning(testability_note(sizes, MIN_GROUP))
value = st.radio(
    "Heatmap value",
    ["frac", "mean_act"],
    horizontal=True,
    key="heat_value",
    format_func={"frac": "fraction of proteins where it fires", "mean_act": "mean of per-protein max activation"}.get,
)
m = group_heatmap(usage, 40, value)
if not m.empty:
    st.plotly_chart(heatmap(m.head(30), f"Most group-specific features by {g}", ylab=g), key="group_heat")
groups_list = sizes.index.tolist()
grp = st.selectbox("Most enriched features in group", groups_list, key="enriched_group")
st.caption(
    group_test_note(idx.group_test())
    if source == "from the index"
    else (
        "One-sided Cochran-Mantel-Haenszel test over 5 protein-length bins against all other groups, Benjamini-Hochberg"
        " FDR (q); effect size = Mantel-Haenszel log odds ratio. Groups under 5 proteins are not tested."
    )
)
top_enriched = enriched(usage, grp)
if top_enriched.empty:
    st.info(f"No feature is enriched in {grp} at q < 0.05" + (f" ({grp} has {int(sizes.get(grp, 0))} proteins; groups"
            f" under {MIN_GROUP} are not tested)." if sizes.get(grp, 0) < MIN_GROUP else "."))
else:
    table(idx.with_labels(top_enriched), key="enriched_table")
if "composition_driven" in usage.columns:
    st.caption(
        "Composition control: 'q, composition-controlled' repeats the test stratified by protein length and by the"
        " protein's content"
        " of the feature's top amino acid (below 0.75x, 0.75-1.25x, above 1.25x its overall frequency)."
        " 'Composition-driven' = enriched by length alone but not once amino-acid content is stratified: the group's"
        " proteins are richer in that residue, which says nothing new about the group."
    )
if len(groups_list) >= 2:
    st.subheader("Two groups side by side")
    a, b = st.columns(2)
    ga = a.selectbox("Group A", groups_list, index=0, key="ga")
    gb = b.selectbox("Group B", groups_list, index=1, key="gb")
    table(compare(usage, ga, gb), key="compare_table")

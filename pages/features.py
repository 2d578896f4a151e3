"""Feature browser: searchable table; a feature's page (deep link ?feature=N)."""
import functools
import json
from pathlib import Path
from textwrap import shorten

import pandas as pd
import streamlit as st

from esmsae.app.columns import match_verdict
from esmsae.app.links import links_html, links_markdown
from esmsae.app.related import decoder_neighbours
from esmsae.app.render import (
    activation_hist,
    firing_windows,
    format_number,
    group_bar,
    label_lanes_html,
    sequence_logo,
    track_html,
)
from esmsae.app.runs import structure_info
from esmsae.app.structure_view import feature_structures, structure_summary
from esmsae.app.ui import cached, ensure_navigation, feature_url, pick_run, require_index, table
from esmsae.index.reader import LabelStoreBusy, set_label
from esmsae.index.verdicts import concept_rows
from esmsae.sae.scale import FeatureScale, display_scale

NOTE = '<div style="color:#666;font-size:0.85em;margin:2px 0 8px 0">{}</div>'

ensure_navigation()
run = pick_run()
idx = require_index(run)


def show_table() -> None:
    st.title("Feature browser")
    c1, c2, c3, c4, c5 = st.columns([2, 2, 1.4, 1, 1])
    search = c1.text_input("Search (description, concept, label, protein name or id, feature id)", key="search",
                           help="every word must occur, e.g. 'zinc', 'transmembrane Archaea', 'P47294'")
    concept = c2.selectbox("Matched concept", [""] + idx.matched_concept_names(), key="concept_filter",
                           help="features that match the concept: they beat every baseline on valid and test proteins")
    kind = c3.selectbox("Kind", idx.KINDS, key="kind_filter",
                        help="residue detectors put >= 90% of their firing on one amino acid; context features do not")
    min_freq = c4.number_input("Min. protein frequency", 0.0, 1.0, 0.0, 0.01, key="min_freq")
    hide_dead = c5.checkbox("Hide dead", True, key="hide_dead")
    df = idx.features(search=search, concept=concept, min_freq=min_freq, hide_dead=hide_dead, kind=kind)
    st.caption(
        "A concept is named only where the feature matches it (its F1 beats fire-everywhere, the single-residue rule"
        " and every local-sequence rule on validation and on held-out test proteins); otherwise the row says which"
        " baseline beats it."
        + (" Search looks in what the pages show (label, concept, description, top proteins' ids and names), every"
           " word whole, ranked by relevance; a number also opens that feature." if search else "")
    )
    st.caption(f"{len(df)} features - click a row to open it, or use ?feature=N")
    # the click opens the feature in the callback, before the rerun: one script run instead of two
    # (a rerun with the selection, then st.rerun() to the feature; bench/pages.py in-app navigation)
    st.session_state["ftable_features"] = df["feature"].tolist()
    table(df, key="ftable", on_select=_open_selected, selection_mode="single-row")


def _open_selected() -> None:
    ev = st.session_state.get("ftable")
    rows = ev.selection.rows if ev is not None and hasattr(ev, "selection") else []
    if rows:
        st.query_params["feature"] = str(int(st.session_state["ftable_features"][rows[0]]))


def show_header(f: int, info: dict) -> None:
    if st.button("Back to all features"):
        del st.query_params["feature"]
        st.rerun()
    v = idx.verdicts().set_index("feature").loc[f]
    title = info["user_label"] or (v["concept"] if v["matches"] else "")
    st.title(f"Feature {f}" + (f": {title}" if title else ""))
    # the evidence right under the title, so that a concept in a title never reads as more than it is
    st.markdown(f"Matches **{v['concept']}**: test F1 {v['f1']:.2f} against {v['baseline_f1']:.2f} for the"
                f" strongest baseline ({v['baseline']})." if v["matches"] else f"Concept: {v['verdict']}.")
    m = st.columns(6)
    m[0].metric(
        "Residue freq.", format_number(info["freq_residue"]), help="fraction of indexed residues where it fires"
    )
    m[1].metric(
        "Protein freq.", format_number(info["freq_protein"]), help="fraction of indexed proteins where it fires"
    )
    m[2].metric("Max", format_number(info["max_act"]), help="largest activation on the indexed proteins")
    m[3].metric("IDF", format_number(info["idf"]), help="log(N proteins / proteins where it fires)")
    m[4].metric(
        "Matched concept F1 (test)" if v["matches"] else "Concept match",
        format_number(v["f1"]) if v["matches"] else "none",
        help=v["verdict"] + (f"; {info['aa_purity']:.0%} of its firing on {info['aa_top']}"
                             if info.get("aa_top") else ""),
    )
    m[5].metric("Top group", info["top_group"] or "-")
    if info.get("description"):
        st.markdown(f"**Description** (from this index's evidence): {info['description']}")
        ev = json.loads(info.get("evidence") or "[]")
        if ev:
            with st.expander("Where each phrase comes from"):
                st.dataframe(pd.DataFrame(ev), hide_index=True, key="evidence_table")
    if info["dead"]:
        st.warning("This feature never fired on the indexed proteins (dead).")
    with st.form("label_form"):
        text = st.text_input("Your label for this feature", value=info["user_label"], key="label_text")
        if st.form_submit_button("Save label"):
            try:
                set_label(idx.path, f, text)
                st.success("Label saved (kept across index rebuilds).")
            except LabelStoreBusy as e:
                st.error(f"Label not saved: {e}")


def protein_name(r) -> str:
    """The protein's name: its FASTA description, or for a structure chain the PDB entry's title."""
    name = (r.get("description") or "").strip()
    if not name and r.get("structure"):
        name = structure_info(r["structure"], r.get("chain") or "").get("title", "").capitalize()
    return name


def show_examples(f: int, scale, best_concept: str = "") -> None:
    ex = idx.examples(f, "top", 20)
    if ex.empty:
        st.info("No examples: the feature never fires.")
        return
    # drawn on request: a logo of a few hundred windows takes a second or two (matplotlib)
    if len(ex) and st.toggle("Sequence logo of the residues around the firing positions", key="show_logo"):
        with st.container(border=True):
            st.pyplot(sequence_logo(firing_windows(ex)), clear_figure=True)
            st.caption("Information content (bits) at each position relative to every residue of the top examples "
                       "where the feature reaches half its max in that protein (logomaker). A tall letter at 0 alone "
                       "is a residue detector; letters either side show the context the feature reads.")
    spans = idx.label_spans(ex["pidx"])
    lanes = not spans.empty and st.toggle("Labels under each track", value=True, key="show_lanes",
                                          help="the protein's per-residue labels (UniProt, TMbed, secondary structure,"
                                               " binding, conservation, disorder, solvent accessibility) on the same"
                                               " position axis as the feature's activation")
    # one HTML element for all 20 examples (tracks, label lanes, links): 60 separate elements cost the
    # browser most of the page's time (bench/pages.py)
    parts = []
    for _, r in ex.iterrows():
        name = protein_name(r)
        title = (
            f"#{r['rank'] + 1}  {r['id']}  {shorten(name, 80, placeholder=' ...')}  {r['organism'] or ''}"
            f"  (max {r['max_act']:.3f} at"
            f" {r['sequence'][r['max_pos']]}{r['max_pos'] + 1}, {r['length']} aa)"
        )
        parts.append(track_html(r["sequence"], r["positions"], scale(r["values"]), scale.vmax,
                                highlight=int(r["max_pos"]), title=title))
        lane_html = label_lanes_html(int(r["length"]), r["positions"], scale(r["values"]), scale.vmax,
                                     spans[spans["pidx"] == r["pidx"]], first=best_concept) if lanes else ""
        if lane_html:
            parts.append(lane_html)
        elif lanes:
            parts.append(NOTE.format("No per-residue labels for this protein in the label sets (UniProt features,"
                                     " TMbed, secondary structure, binding, conservation, disorder, solvent"
                                     " accessibility)."))
        links = links_html(r["id"], r.get("structure") or "")
        if links:
            parts.append(f'<div class="esmsae-links" style="margin:2px 0 12px 0">{links}</div>')
    st.html("".join(parts))


def show_ranges(f: int, scale) -> None:
    st.plotly_chart(activation_hist(idx.feature_hist(f)), key="ahist")
    qx = idx.examples(f, "quantile", 100)
    parts = []  # one HTML element for the whole tab (as the top examples)
    for b, grp in qx.groupby("bin", sort=False):
        parts.append(f"<p><b>Range {grp['bin_lo'].iloc[0]:.3f} - {grp['bin_hi'].iloc[0]:.3f}</b></p>")
        parts += [track_html(r["sequence"], r["positions"], scale(r["values"]), scale.vmax, highlight=int(r["max_pos"]),
                             title=f"{r['id']} (max {r['max_act']:.3f})") for _, r in grp.iterrows()]
    if parts:
        st.html("".join(parts))


def show_groups(f: int) -> None:
    gs = idx.groupings()
    if gs:
        g = st.selectbox("Grouping", gs, index=gs.index("kingdom") if "kingdom" in gs else 0, key="feat_grouping")
        gt = idx.group_table(f, g)
        st.plotly_chart(group_bar(gt, g), key="gbar")
        table(gt, key="feature_group_table")


def show_structure(f: int, vmax: float) -> None:
    # cached per index file: the tab stays drawn once opened, so it reruns on every switch (4 files read,
    # parsed and aligned each time without the cache)
    cands, views = cached(idx, "feature_structures", functools.partial(feature_structures, idx), f, vmax)
    summary = cached(idx, "structure_summary", lambda g: structure_summary(idx, g, vmax, cands), f)
    if not cands:
        st.info("None of the proteins with a structure in this bundle activates this feature, and none of its top"
                " examples has a structure in the shared structure links. " + summary.split(". ", 1)[-1])
        return
    st.info(summary)
    st.caption("Each chain is coloured by the feature on one scale (the feature's max), mapped through a sequence"
               " alignment, so unresolved residues are skipped.")
    shown = cands[:len(views)]
    cols = st.columns(2)
    for i, (c, v) in enumerate(zip(shown, views)):
        r = c["row"]
        with cols[i % 2]:
            about = structure_info(c["rel"], c["chain"])
            name = protein_name(r) or about.get("title", "").capitalize()
            where = f"top example #{c['rank']}" if c["rank"] else "protein with a structure"
            share = f", {c['share']:.0%} of the feature's max" if c["share"] == c["share"] else ""
            st.markdown(f"**{r['id']}** ({where}, max {r['max_act']:.3f}{share})"
                        f" {shorten(name, 90, placeholder=' ...')}  \n"
                        + links_markdown(r["id"], c["rel"]) + f" · chain {c['chain']}")
            if v.error:
                st.warning(v.error)
                continue
            if v.note:
                st.caption(v.note)
            st.iframe(v.html, height=340)
    if len(cands) > len(shown):
        st.caption("More chains: " + ", ".join(f"{c['row']['id']} ({Path(c['rel']).name} {c['chain']})"
                                              for c in cands[len(shown):]))


def show_concepts(f: int) -> None:
    st.caption(
        "The verdict first: a match beats every baseline on validation and on held-out test proteins (with a"
        " bootstrap interval above 0); otherwise the deciding baseline (the strongest on test: fire everywhere, the"
        " single-residue rule, a hand rule such as a Kyte-Doolittle window, or a learned logistic model of the"
        " one-hot sequence window, each chosen on validation proteins) is named with its F1. Thresholds are"
        " fractions of the feature's max (InterPLM); for a left-to-right LM the lag says how many residues later"
        " the state is read; precision per labelled residue, recall per domain or per residue by concept kind, and"
        " the plain per-residue F1 beside it."
    )
    rows = concept_rows(idx, f)
    for r in rows.head(3).to_dict("records"):  # the verdicts in words, the deciding baseline named
        st.markdown(f"- **{r['concept']}**: {'match' if r['verdict'] == 'match' else 'no match'}, test F1"
                    f" {r['f1_test']:.2f} against the deciding baseline {r['deciding baseline']}"
                    f" ({r['its F1 (test)']:.2f})")
    table(rows, key="concept_table",
          column_config={"verdict": st.column_config.TextColumn(pinned=True),
                         "concept": st.column_config.TextColumn(pinned=True)})


def show_related(f: int) -> None:
    st.markdown("**Related features in this SAE** (closest decoder directions)")
    try:
        near = decoder_neighbours(run.sae_dir, f)
    except (OSError, KeyError, ValueError) as e:
        st.info(f"The SAE's weights could not be read here ({e}).")
    else:
        v = idx.verdicts().set_index("feature")
        near["concept"] = near["feature"].map(v["verdict"])
        near["page"] = [feature_url(int(g), run) for g in near["feature"]]
        table(near, key="near_table", link={"page": "open"})
        st.caption("Decoder cosine between unit-norm dictionary directions: features that write into the same"
                   " direction of the LM state. Each row opens that feature's page.")
    st.markdown("**Matches in other SAEs**")
    rel = idx.related(f)
    if rel.empty:
        st.info(
            "No other SAE matched into this index yet: `python -m esmsae match THIS_SAE OTHER_SAE --index"
            " THIS_INDEX` stores the best matches (decoder cosine, same width; activation correlation with --fasta,"
            " any two SAEs)."
        )
    else:
        st.caption(
            "Best matches of this feature in other SAEs; split = several features of the other SAE map to this one "
            "(feature splitting)."
            + (" The other SAE is not bundled with this run, so its features have no page here: the rows say how"
               " this feature relates to it, they cannot be opened." if rel["other_sae"].astype(str).str.contains(
                   "not bundled").any() else "")
        )
        sm = idx.match_summaries()
        if not sm.empty:
            st.caption(
                "How often a feature has a counterpart (best score >= threshold), next to the chance level: the"
                " same comparison against an untrained SAE of the other SAE's shape. A method whose rate is near"
                " chance says little here."
            )
            for _, m in sm.iterrows():
                live = m.get("match_rate_live")
                use_live = live is not None and not pd.isna(live)
                rate, chance = (live, m.get("chance_match_rate_live")) if use_live else (
                    m["match_rate"], m.get("chance_match_rate"))
                st.markdown(f"**{m['method'].replace('_', ' ')}** against {m['other_sae']}: "
                            f"{match_verdict(rate, chance)}" + (" (live features)" if use_live else ""))
            table(sm, key="match_summary_table")
        table(rel, key="related_table")


def show_feature(f: int) -> None:
    info = idx.feature(f)
    show_header(f, info)
    ref_from = display_scale(info)[2]
    mode = st.radio("Activation scale", ["raw", "max", "max_idf"], horizontal=True, key="norm_mode",
                    format_func={"raw": "raw", "max": "/ feature max (0-1)", "max_idf": "/ max x IDF (ESM C SAE)"}.get,
                    help=f"max and IDF from {ref_from}")
    scale = FeatureScale(info, mode)
    feature_tabs(f, info, scale)


@st.fragment
def feature_tabs(f: int, info: dict, scale) -> None:
    """Lazy tabs: only the open tab's content runs (a page load or a tab switch pays for one tab), and a
    switch reruns this fragment only, not the header above it. The open tab is in the URL
    (?tab=Structure), so a link can open a feature on any tab."""
    names = ["Top examples", "Activation ranges", "Concepts", "Groups", "Structure", "Related features"]
    tabs = dict(zip(names, st.tabs(names, key="tab", bind="query-params")))
    with tabs["Top examples"]:
        if tabs["Top examples"].open is not False:
            show_examples(f, scale, idx.verdicts().set_index("feature").at[f, "about"] or "")
    with tabs["Activation ranges"]:
        if tabs["Activation ranges"].open:
            show_ranges(f, scale)
    with tabs["Concepts"]:
        if tabs["Concepts"].open:
            show_concepts(f)
    with tabs["Groups"]:
        if tabs["Groups"].open:
            show_groups(f)
    # once opened, the Structure tab stays drawn (hidden) while other tabs are open: removing its 3D
    # viewers on every switch away cost ~2 s in Chromium (bench/pages.py), drawing them hidden ~0.1 s
    seen = st.session_state.setdefault("structure_tab_seen", set())
    if tabs["Structure"].open:
        seen.add(f)
    with tabs["Structure"]:
        if f in seen:
            show_structure(f, float(info["max_act"] or 0))
    with tabs["Related features"]:
        if tabs["Related features"].open:
            show_related(f)

q = st.query_params.get("feature")
if q is None:
    show_table()
else:
    try:
        f = int(q)
        idx.feature(f)
    except ValueError:
        st.error(
            f"The link asks for feature {q!r}, which is not a feature number: features are numbered 0 to"
            f" {idx.n_features - 1}."
        )
        show_table()
    except KeyError:
        st.error(f"This run has no feature {q}: its SAE has features 0 to {idx.n_features - 1}.")
        show_table()
    else:
        show_feature(f)

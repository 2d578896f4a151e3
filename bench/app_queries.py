"""Server-side latency of the queries behind the feature page and the feature table, on a large
synthetic index: 16,384 features x 20 top examples, 100,000 proteins (the demo index's schema,
filled by DuckDB generators with the row counts per feature of the demo index, scaled up).

Times esmsae.explore.FeatureIndex calls exactly as pages/features.py makes them, for 200
random features; reports median and p95 per query and for a whole feature page (all its
queries in sequence). Writes bench/results/app_queries.json.
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from esmsae.index.reader import FeatureIndex  # noqa: E402

DEMO = ROOT / "data" / "demo" / "index.duckdb"
CACHE = ROOT / "bench" / "cache"
N_FEATURES, TOP_N, N_PROTEINS, TRACK = 16_384, 20, 100_000, 30


def build(path: Path) -> Path:
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(tmp))
    con.execute(f"ATTACH '{DEMO}' AS demo (READ_ONLY)")
    for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = 'demo'").fetchall():
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM demo.{t} LIMIT 0")
    F, P = N_FEATURES, N_PROTEINS
    track = (
        f"list_transform(range({TRACK}), lambda x: (x * 11)::INTEGER) AS positions, list_transform(range({TRACK}),"
        ' lambda x: random()) AS "values"'
    )
    con.execute("SELECT setseed(0.42)")
    con.execute(
        f"""INSERT INTO proteins SELECT i, 'SYN' || i, 'synthetic protein ' || i, 350,
        array_to_string(list_transform(range(350), lambda x: substr('ACDEFGHIKLMNPQRSTVWY', 1 + (random() *
        19.99)::INTEGER, 1)), ''),
        'organism ' || (i % 300), i % 300, ['Bacteria', 'Archaea', 'Eukaryota'][1 + i % 3], 'cellular organisms',
        'synthetic', '',
        CASE WHEN i < 200 THEN 'structures/s' || i || '.pdb' END, CASE WHEN i < 200 THEN 'A' END, 40 FROM range({P})
        t(i)"""
    )
    con.execute(
        f"""INSERT INTO features SELECT f, random() * 0.01, random() * 0.2, 100, 1000, 1 + random() * 9, random(),
        random(), random() * 2, random() * 5, f % 10 = 0, false, random() * 5,
        CASE WHEN f % 3 = 0 THEN 'concept ' || (f % 60) END, random(), 0.5, random(), random(),
        'feature ' || f || ' helix' || (f % 7), ['Bacteria', 'Archaea', 'Eukaryota'][1 + f % 3], f % 40, random() *
        10, random() * 10
        FROM range({F}) t(f)"""
    )
    con.execute(
        f"INSERT INTO feature_hist SELECT f, b * 0.1, b * 0.1 + 0.1, (random() * 1000)::BIGINT FROM range({F}) t(f),"
        " range(12) u(b) ORDER BY f, b"
    )
    con.execute(f"""INSERT INTO top_examples SELECT f, r, (hash(f * 131 + r) % {P})::BIGINT, 10 - r * 0.1, 33, {track}
        FROM range({F}) t(f), range({TOP_N}) u(r) ORDER BY f, r""")
    con.execute(
        f"""INSERT INTO quantile_examples SELECT f, b, b * 0.2, b * 0.2 + 0.2, (hash(f * 7 + b * 1000 + j) %
        {P})::BIGINT,
        random(), 5, {track} FROM range({F}) t(f), range(5) u(b), range(5) v(j) ORDER BY f, b, 6 DESC"""
    )
    con.execute(f"""INSERT INTO structure_tracks SELECT (hash(f * 3 + j) % 200)::BIGINT, f, random(), {track}
        FROM range({F}) t(f), range(36) v(j) ORDER BY f, 3 DESC""")
    con.execute(
        "INSERT INTO concepts SELECT 'concept ' || c, 'synthetic', 1000, 100, 100, 0.1, true FROM range(60) t(c)"
    )
    con.execute(
        f"""INSERT INTO concept_f1 SELECT f, 'concept ' || ((f + c) % 60), 0.5, 10, 20, 5, random(), random(),
        random(), random()
        FROM range({F}) t(f), range(28) u(c) ORDER BY f, 10 DESC"""
    )
    con.execute(
        """INSERT INTO groups SELECT 'kingdom', k, 33333 FROM (VALUES ('Bacteria'), ('Archaea'), ('Eukaryota')) v(k)
        UNION ALL SELECT 'organism', 'organism ' || o, 333 FROM range(300) t(o)"""
    )
    con.execute(
        f"""INSERT INTO group_usage SELECT 'kingdom', ['Bacteria', 'Archaea', 'Eukaryota'][1 + g], f, 33333, 100,
        random(), random(),
        random(), random(), random() FROM range({F}) t(f), range(3) u(g)
        UNION ALL SELECT 'organism', 'organism ' || o, f, 333, 10, random(), random(), random(), random(), random()
        FROM range({F}) t(f), range(27) u(o) ORDER BY 1, 3"""
    )
    meta = dict(con.execute("SELECT key, value FROM demo.meta").fetchall())
    sae_cfg = json.loads(meta["sae_cfg"])
    sae_cfg["sae"]["n_latents"] = F
    meta.update(
        n_latents=json.dumps(F), n_proteins=json.dumps(P), n_residues=json.dumps(P * 350), sae_cfg=json.dumps(sae_cfg)
    )
    con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
    con.execute("DETACH demo")
    con.close()
    tmp.rename(path)
    return path


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main(n: int = 200) -> dict:
    t0 = time.perf_counter()
    path = build(CACHE / "synthetic_index.duckdb")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = FeatureIndex(path)
    open_s = time.perf_counter() - t0
    feats = random.Random(0).sample(range(N_FEATURES), n)
    page = {  # the calls pages/features.py makes for one feature, in order
        "feature": lambda f: idx.feature(f),
        "feature_hist": lambda f: idx.feature_hist(f),
        "top_examples": lambda f: idx.examples(f, "top", 20),
        "quantile_examples": lambda f: idx.examples(f, "quantile", 25),
        "concept_table": lambda f: idx.concept_table(f),
        "group_table": lambda f: idx.group_table(f, "kingdom"),
        "structure_examples": lambda f: idx.structure_examples(f),
    }
    table = {  # the feature browser's table: default, a search, a concept filter with a sort
        "table_default": lambda f: idx.features(),
        "table_search": lambda f: idx.features(search="helix3"),
        "table_concept_sorted": lambda f: idx.features(
            concept=f"concept {f % 60}", sort="freq_residue", descending=True
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in [*page, "feature_page_total", *table]}
    for q in (*page.values(), *table.values()):  # warm-up: the app keeps the connection open
        q(feats[0])
    for f in feats:
        total = 0.0
        for k, q in page.items():
            t = time.perf_counter()
            q(f)
            dt = time.perf_counter() - t
            times[k].append(dt)
            total += dt
        times["feature_page_total"].append(total)
    for f in feats[:50]:
        for k, q in table.items():
            t = time.perf_counter()
            q(f)
            times[k].append(time.perf_counter() - t)
    rows = {
        k: {"median_ms": 1000 * statistics.median(v), "p95_ms": 1000 * percentile(v, 95), "n": len(v)}
        for k, v in times.items()
    }
    sizes = {
        t: idx.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        for t in (
            "proteins",
            "features",
            "top_examples",
            "quantile_examples",
            "structure_tracks",
            "concept_f1",
            "group_usage",
        )
    }
    out = {"index": {"rows": sizes, "file_mb": path.stat().st_size / 1e6, "build_s": build_s, "open_s": open_s},
           "queries": rows, "target_p95_ms": 100,
           "feature_page_p95_ms": rows["feature_page_total"]["p95_ms"],
           "met": all(rows[k]["p95_ms"] < 100 for k in [*page, "feature_page_total"])}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "app_queries.json").write_text(json.dumps(out, indent=2) + "\n")
    for k, r in rows.items():
        print(f"{k:>22}: median {r['median_ms']:7.1f} ms, p95 {r['p95_ms']:7.1f} ms")
    print(json.dumps(out["index"]))
    return out


if __name__ == "__main__":
    main()

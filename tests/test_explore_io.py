"""The app's read path against concurrent writers: rebuilt indexes and label saves."""
import json
import os
import threading

import duckdb
import pytest

from esmsae.index.reader import FeatureIndex, get_labels, set_label
from esmsae.index.tables import FORMAT_VERSION


def _fake_index(path, n_latents, version=FORMAT_VERSION):
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('n_latents', ?)", [json.dumps(n_latents)])
    if version is not None:
        con.execute("INSERT INTO meta VALUES ('format_version', ?)", [json.dumps(version)])
    con.close()


def test_an_index_in_another_format_is_refused_with_the_fix(tmp_path):
    """The index's format version is checked on open: an unversioned or newer file gets a message
    saying which format it is and to rebuild, not a KeyError deep in a page."""
    for v in (None, FORMAT_VERSION + 1):
        _fake_index(tmp_path / f"i{v}.duckdb", 8, v)
        with pytest.raises(ValueError, match=r"feature index in format .*this esmsae reads format .*rebuild it"):
            FeatureIndex(tmp_path / f"i{v}.duckdb")


def test_a_rebuilt_index_is_seen_by_new_readers(tmp_path):
    path = tmp_path / "index.duckdb"
    _fake_index(path, 80)
    old = FeatureIndex(path)
    assert old.n_features == 80
    _fake_index(tmp_path / "new.duckdb", 483)
    os.replace(tmp_path / "new.duckdb", path)  # what a rebuild does
    # a session opening the index now must see the new file, while the old reader keeps working
    assert FeatureIndex(path).n_features == 483
    assert int(old.q("SELECT value FROM meta").iloc[0, 0]) == 80


def test_concurrent_label_saves_and_reads(tmp_path):
    path = tmp_path / "index.duckdb"
    _fake_index(path, 10)
    errors = []

    def session(t):
        try:
            for i in range(15):
                set_label(path, t * 100 + i, f"s{t} l{i}")
                get_labels(path)
        except Exception as e:  # noqa: BLE001 - any error is the failure
            errors.append(repr(e))

    threads = [threading.Thread(target=session, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    labels = get_labels(path)
    assert len(labels) == 90 and labels[503] == "s5 l3"


def test_runs_are_found_wherever_the_cli_put_them(tmp_path):
    from esmsae.app.runs import list_runs

    def ck(rel, index=None):
        d = tmp_path / rel
        d.mkdir(parents=True)
        (d / "cfg.json").write_text("{}")
        (d / "sae.safetensors").write_bytes(b"x")
        if index:
            _fake_index(d / index, 4)
        return d

    ck("imported")  # import --out workspace/imported
    ck("job/L3_resid", "index.duckdb")  # a training job
    ck("cli/run/L6_mlp", "custom_name.duckdb")  # train --out workspace/cli/run, index --out .../custom_name.duckdb
    (tmp_path / "half.tmp").mkdir()
    (tmp_path / "half.tmp" / "cfg.json").write_text("{}")  # a checkpoint being written is not a run
    runs = {r.name: r for r in list_runs(tmp_path, tmp_path / "no-demo")}
    assert set(runs) == {"imported", "job/L3_resid", "cli/run/L6_mlp"}
    assert runs["cli/run/L6_mlp"].index.name == "custom_name.duckdb" and runs["job/L3_resid"].index.exists()
    assert not runs["imported"].index.exists()

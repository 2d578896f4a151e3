"""Package structure: no import cycles, every module imports alone, the light entry points stay light."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "esmsae"


def _modules() -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _module_level_imports(mod: str, everywhere: bool = False) -> set[str]:
    """Intra-package modules imported by ``mod`` (relative or absolute imports): at module level, or
    (``everywhere``) also inside functions and ``TYPE_CHECKING`` blocks, except the top package's lazy
    ``__getattr__`` (the API facade)."""
    path = ROOT / (mod.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / mod.replace(".", "/") / "__init__.py"
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    deps = set()
    tree = ast.parse(path.read_text())
    lazy = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}
    nodes = [n for n in ast.walk(tree) if id(n) not in lazy] if everywhere else tree.body
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "esmsae"):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [target + "." + a.name for a in node.names]
            found = [n for n in names if n in ALL]
            deps.update(found or ([target] if target in ALL else []))
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in ALL)
    deps.discard(mod)
    return deps


ALL = set(_modules())


def _check_acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path[path.index(d):] + [d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_import_cycles():
    graph = {m: _module_level_imports(m) for m in ALL}
    _check_acyclic(graph)
    # also counting imports inside functions (cli <-> demo and cli -> jobs -> cli were such cycles)
    _check_acyclic({m: _module_level_imports(m, everywhere=True) for m in ALL})
    # the splits this layout promises
    assert "esmsae.cli" not in set().union(
        *(d for m, d in graph.items() if m != "esmsae.__main__")
    ), "only __main__ imports the CLI"
    # one owner per artefact: the index is read through index/reader (which needs only the schema and
    # the matches side file), and nothing inside the package imports the public api facade
    assert graph["esmsae.index.reader"] <= {"esmsae.index.tables", "esmsae.index.matches"}
    everywhere = {m: _module_level_imports(m, everywhere=True) for m in ALL}
    assert not [m for m, d in everywhere.items() if "esmsae.api" in d and m != "esmsae"], "api is a facade"


def _imports_duckdb(mod: str) -> bool:
    path = ROOT / (mod.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    return any(
        (isinstance(n, ast.Import) and any(a.name == "duckdb" for a in n.names))
        or (isinstance(n, ast.ImportFrom) and n.module == "duckdb")
        for n in ast.walk(tree)
    )


def test_the_index_file_has_one_owner_and_modules_stay_small():
    """SQL on the index file lives in esmsae/index/ only (checkpoint, demo, render, match, runs hold
    none), and no module of the package is over 500 lines."""
    files = [m for m in ALL if not m.startswith("esmsae.index") and (ROOT / (m.replace(".", "/") + ".py")).exists()]
    outside = sorted(m for m in files if _imports_duckdb(m))
    assert outside == [], outside
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    long = {p: n for p, n in sizes.items() if n > 500}
    assert not long, long


# Third-party packages the modules use, imported once by the parent before it forks a child per
# esmsae module: a child then imports its esmsae module (and whatever esmsae modules that pulls in)
# from nothing, which is what an import-order bug or a cycle breaks, without paying torch's import
# (several seconds on a 2-core machine) 80 times.
_FORK_CHECK = """
import importlib, os, sys, traceback
import numpy, pandas, duckdb, torch, transformers, safetensors  # noqa: F401
bad = []
for m in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(m)
            os._exit(0)
        except BaseException:
            os.write(w, traceback.format_exc()[-800:].encode())
            os._exit(1)
    os.close(w)
    err = os.read(r, 4096).decode()
    os.close(r)
    if os.waitpid(pid, 0)[1]:
        bad.append((m, err))
print(bad)
sys.exit(1 if bad else 0)
"""


def test_every_module_imports_alone():
    mods = sorted(ALL - {"esmsae.__main__"})
    p = subprocess.run([sys.executable, "-c", _FORK_CHECK, *mods], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    # and one module in a bare interpreter, so the check itself is known to catch a failing import
    bad = subprocess.run([sys.executable, "-c", _FORK_CHECK, "esmsae.no_such_module"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "no_such_module" in bad.stdout


def test_light_entry_points_do_not_import_torch():
    code = ("import sys\nfrom esmsae.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import esmsae.index.reader, esmsae.app.runs, esmsae.sae.scale, esmsae.app.groups, esmsae.sae.pipeline\n"
            "print('TORCH', 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "TORCH False" in p.stdout, p.stdout[-500:] + p.stderr[-800:]


def test_a_truncated_structure_file_is_flagged(shared):
    """The first part of a real mmCIF / PDB file parses into a few residues; it is flagged as cut short
    (mid-record end, atoms far below the declared chain length), while the whole files are not."""
    from esmsae.app.render import parse_structure, truncation_warnings

    S = shared / "structures"
    for f, fmt in ((S / "pdb" / "1aki.cif", "cif"), (S / "plip" / "1acj.pdb", "pdb")):
        text = f.read_text()
        assert truncation_warnings(text, fmt, parse_structure(text, fmt)) == []
        cut = text[: text.index("_atom_site.group_PDB") + 3000] if fmt == "cif" else text[: len(text) // 3]
        w = truncation_warnings(cut, fmt, parse_structure(cut, fmt))
        assert any("ends in the middle of an atom record" in x for x in w), w
        assert any("declare" in x for x in w), w


# The layers of the package, lowest first: the data flow fasta -> LM -> store -> SAE -> (published
# SAEs) -> index -> analysis -> app pages -> demo bundle, with the entry points (cli, commands, api)
# on top. A module may import its own layer and the layers below it, never one above.
LAYERS = ["core", "config", "lm", "store", "sae", "published", "index", "analysis", "app", "demo", "top"]


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else "top"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(
        f"{m} ({_layer(m)}) imports {d} ({_layer(d)})"
        for m, deps in graph.items()
        for d in deps
        if rank[_layer(d)] > rank[_layer(m)]
    )


def test_packages_are_layers_and_imports_point_down():
    everywhere = {m: _module_level_imports(m, everywhere=True) for m in ALL}
    assert {_layer(m) for m in ALL} == set(LAYERS), "a package that has no place in LAYERS"
    assert layer_violations(everywhere) == []
    top = sorted(m for m in ALL if _layer(m) == "top")
    assert len(top) <= 10, top  # only the entry points stay at the top level
    # the check itself sees an upward import: the SAE reading the index, as checkpoint once did
    assert layer_violations({"esmsae.sae.checkpoint": {"esmsae.index.reader"}}) == [
        "esmsae.sae.checkpoint (sae) imports esmsae.index.reader (index)"
    ]


def test_packages_re_export_nothing_lazily_and_list_their_modules():
    """No ``__getattr__`` name maps in the sub-packages (a reader and a static import graph follow every
    import), and each package's docstring names each of its modules, so the table cannot drift."""
    for init in sorted(PKG.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        assert not [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"], init
        doc = ast.get_docstring(tree) or ""
        missing = [p.name for p in sorted(init.parent.glob("*.py")) if p.name != "__init__.py" and p.name not in doc]
        assert not missing, f"{init.relative_to(ROOT)} does not describe {missing}"


CHECKPOINT_FILES = {"cfg.json", "sae.safetensors"}
# the readers and writers of foreign formats that use the same file names (sparsify, SAELens) in their own layout
FOREIGN = {"esmsae/published/sparsify.py", "esmsae/published/saelens.py", "esmsae/published/source.py",
           "esmsae/published/convert.py", "esmsae/published/hub.py"}


def checkpoint_file_handlers(sources: dict[str, str]) -> list[str]:
    """Where a module (path -> source) names a checkpoint file as a string of its own (a path piece,
    not prose), or imports the checkpoint's file-name constants."""
    out = []
    for rel, text in sources.items():
        for n in ast.walk(ast.parse(text)):
            is_str = isinstance(n, ast.Constant) and isinstance(n.value, str)
            if is_str and n.value.rsplit("/", 1)[-1] in CHECKPOINT_FILES:
                out.append(f"{rel}:{n.lineno} {n.value!r}")
            elif isinstance(n, ast.ImportFrom) and n.module == "esmsae.sae.checkpoint":
                out += [f"{rel}:{n.lineno} imports {a.name}" for a in n.names if a.name in ("WEIGHTS", "CFG")]
    return out


def test_the_checkpoint_files_have_one_owner():
    """Every read and write of cfg.json / sae.safetensors goes through esmsae/sae/checkpoint.py (and the
    readers of foreign formats that share the names)."""
    sources = {p.relative_to(ROOT).as_posix(): p.read_text() for p in PKG.rglob("*.py")}
    owned = {rel: text for rel, text in sources.items() if rel not in FOREIGN | {"esmsae/sae/checkpoint.py"}}
    assert checkpoint_file_handlers(owned) == []
    # the check sees a hand-written read, as demo.py and jobs.py once had, and the constants imported
    bad = 'import json\nfrom esmsae.sae.checkpoint import WEIGHTS\nm = json.loads((d / "cfg.json").read_text())\n'
    assert checkpoint_file_handlers({"x.py": bad}) == ["x.py:3 'cfg.json'", "x.py:2 imports WEIGHTS"] or \
        sorted(checkpoint_file_handlers({"x.py": bad})) == ["x.py:2 imports WEIGHTS", "x.py:3 'cfg.json'"]

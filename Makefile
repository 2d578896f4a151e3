# esmsae: set-up, app, tests. Every target installs what it needs first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501
THREEDMOL := static/3Dmol-min.js

.PHONY: venv app test test-fast lint browser demo bench clean

$(STAMP): requirements.txt requirements-esm.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel (a bare `torch` would pull GBs of CUDA packages)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	# esm without its declared deps: they pull torchvision/torchtext builds that break
	# transformers next to a CPU torch; its real runtime needs are in requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-esm.txt
	# esmsae itself, editable: the `esmsae` command (esmsae index ..., as InterPLM and SAELens users expect)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -c "import esm.models.esmc, transformers, torch, duckdb, streamlit; print('esmsae environment ok, torch', torch.__version__)"
	$(BIN)/esmsae --help >/dev/null
	touch $(STAMP)

# 3Dmol.js served by Streamlit's static file serving (py3Dmol would fetch it from a CDN, which fails offline)
$(THREEDMOL):
	mkdir -p static .npm
	npm install --silent --no-audit --no-fund --prefix .npm 3dmol@2.5.5
	cp .npm/node_modules/3dmol/build/3Dmol-min.js $(THREEDMOL)

venv: $(STAMP) $(THREEDMOL)

app: venv
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true

# Debian's Chromium for the Playwright journeys (tests/test_browser.py)
# In CI (CI=true) a missing browser fails the run: the journeys must run there, not be skipped.
browser:
	@command -v chromium >/dev/null || { SUDO=$$(command -v sudo || true); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } \
	  || { if [ "$$CI" = "true" ]; then echo "ERROR: could not install Debian's chromium, which CI needs for tests/test_browser.py"; exit 1; \
	       else echo "WARNING: could not install Debian's chromium: the browser journeys (tests/test_browser.py) will be skipped"; fi; }

lint: venv
	$(BIN)/ruff check esmsae pages app.py tests bench

test: venv browser lint
	$(BIN)/python -m pytest -q -ra --durations=20 tests

test-fast: venv
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

demo: venv
	$(BIN)/python -m esmsae demo $(DEMO_ARGS)

bench: venv
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/extract_throughput.py
	$(BIN)/python bench/index_scaling.py
	$(BIN)/python bench/encode_precision.py
	$(BIN)/python bench/train_memory.py
	$(BIN)/python bench/app_queries.py
	$(BIN)/python bench/inspector_latency.py
	$(BIN)/python bench/lm_amp.py
	$(BIN)/python bench/distributed.py
	# needs the demo's activation store (make demo): mixed-precision training at UniRep-1900 width
	$(BIN)/python bench/train_precision.py
	# time to a fixed held-out FVU against sparsify on the demo store's UniRep-1900 states (~25 min)
	$(BIN)/python bench/time_to_quality.py
	# the UniRep-1900 recurrent forward against this machine's GEMM limit
	$(BIN)/python bench/unirep_forward.py
	# page loads in Debian's Chromium (make browser)
	$(BIN)/python bench/pages.py

clean:
	rm -rf $(VENV) .pytest_cache .npm static/3Dmol-min.js

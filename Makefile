# esmsae: set-up, app, tests. Every target installs what it needs first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: venv app test test-fast bench clean

$(STAMP): requirements.txt requirements-esm.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel (a bare `torch` would pull GBs of CUDA packages)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	# esm without its declared deps: they pull torchvision/torchtext builds that break
	# transformers next to a CPU torch; its real runtime needs are in requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-esm.txt
	$(BIN)/python -c "import esm.models.esmc, transformers, torch, duckdb, streamlit; print('esmsae environment ok, torch', torch.__version__)"
	touch $(STAMP)

venv: $(STAMP)

app: $(STAMP)
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python bench/lm_amp.py

clean:
	rm -rf $(VENV) .pytest_cache

# Two entry points: `make quickstart` (set-up + the main job) and `make test` (set-up + tests).
VENV   := .venv
PY     := $(VENV)/bin/python
WG2    := $(VENV)/bin/wg2
STAMP  := $(VENV)/.installed
# pytest processes; each uses one torch thread (2-core machines thrash with more)
TEST_WORKERS ?= 2

.PHONY: quickstart test install

install: $(STAMP)

# Torch first: the local CPU build where no CUDA GPU is visible, so no CUDA wheels are pulled;
# the registry's default (CUDA) build where one is.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet "torch>=2.3,<3"; \
	else \
		$(PY) -m pip install --quiet torch==2.13.0; \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

quickstart: install
	$(WG2) corpus build --out corpora/harvard
	$(WG2) grid experiments/grids/quickstart.toml
	$(WG2) compare experiments/grids/quickstart.toml --out results/quickstart

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=15

# Two commands from a fresh clone: `make demo` and `make test`. Both install first.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint bench dev clean

install: $(VENV)/.installed

# torch first, pinned: it is the CPU build; letting sentence-transformers resolve torch
# on its own pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/embedding-backfills demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/write_path.py

dev: install
	$(BIN)/dagster dev

clean:
	rm -rf $(VENV) .embedded_pg .dagster_home .tmp_dagster_home_*

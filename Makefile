# The two quick-start commands: `make demo` and `make test` each build .venv from scratch
# (when missing or when setup.cfg changed) and then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): setup.cfg setup.py pyproject.toml fs_crm/freeswitch/_eslindex.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fs-crm demo

test: $(STAMP)
	$(BIN)/ruff check fs_crm recordings tests bench
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info

# One command to run the bridge locally, one to run the tests (both set up .venv first).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install dev test lint bench pixel-snippet
install: $(VENV)/.installed

dev: $(VENV)/.installed
	$(BIN)/bridge dev

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/pipeline.py

# The custom pixel snippet merchants paste, from the app pixel's code (extensions/web-pixel/).
pixel-snippet: $(VENV)/.installed
	$(BIN)/python extensions/web-pixel/snippet.py

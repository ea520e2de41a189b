# Set-up and everyday commands. Every target is idempotent: the virtual environment is built once
# and rebuilt only when pyproject.toml or this file changes.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# PyTorch 2.13.0: a CPU build where pip has one on disk (CI machines), otherwise from PyPI. On a GPU box
# pass your own, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (README).
TORCH  ?= torch==2.13.0
CONFIG ?= configs/default.yaml

.PHONY: install system-deps run test lint ci clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,quant,plot]"
	# natten's build imports torch, so it is installed after torch, without build isolation.
	$(BIN)/python -m pip install --quiet --no-build-isolation "natten>=0.21"
	touch $@

# ffmpeg and rtsp-server-perl serve a real RTSP camera on loopback for the RTSP tests (Debian; needs root).
system-deps:
	@if command -v ffmpeg >/dev/null && command -v rtsp-server-perl >/dev/null; then \
		echo "system-deps: ffmpeg and rtsp-server-perl are installed"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			ffmpeg rtsp-server-perl; \
	fi

run: install
	$(BIN)/emim-stream run --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

ci: test lint

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

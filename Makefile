# Set-up and everyday commands. Every target is idempotent: the virtual environment is built once
# and rebuilt only when pyproject.toml or this file changes.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# PyTorch 2.13.0: a CPU build where pip has one on disk (CI machines), otherwise from PyPI. On a GPU box
# pass your own, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (README).
TORCH  ?= torch==2.13.0
CONFIG ?= configs/default.yaml

.PHONY: install system-deps run engine test test-all test-py3.10 test-py3.12 test-arm64 lint docs docs-serve ci clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,docs,quant,plot]"
	# natten's build imports torch, so it is installed after torch, without build isolation.
	$(BIN)/python -m pip install --quiet --no-build-isolation "natten>=0.21"
	touch $@

# Real peers for the tests (Debian; needs root): ffmpeg and rtsp-server-perl serve an RTSP camera on
# loopback, mosquitto is the MQTT broker, chromium the browser of the live-view tests.
SYSTEM_TOOLS = ffmpeg rtsp-server-perl mosquitto mosquitto_sub chromium
SYSTEM_PACKAGES = ffmpeg rtsp-server-perl mosquitto mosquitto-clients chromium
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then \
		echo "system-deps: $(SYSTEM_TOOLS) are installed"; \
	else \
		echo "system-deps: installing (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(SYSTEM_PACKAGES); \
	fi

run: install
	$(BIN)/emim-stream run --config $(CONFIG)

# Build CONFIG's compiled engine ahead of time (minutes on a small CPU), so that `make run` starts compiled.
engine: install
	$(BIN)/emim-stream build-engine --backend aoti --config $(CONFIG)

# The fast set (minutes); test-all adds the slow one: end-to-end pipelines and the AOTInductor build (pyproject's
# markers, tests/conftest.py).
test: install
	$(BIN)/python -m pytest -q -m "not slow"

# Every test: the end-to-end tests at normal CPU priority beside the others at the lowest (tools/test-all).
test-all: install
	PYTHON=$(BIN)/python tools/test-all

# The fast set on the other supported Pythons (3.10: Jetson's JetPack 6, 3.12: JetPack 7), each in an environment
# that tools/python-env builds once under ~/.cache/emim-stream-envs and reuses until the dependencies in pyproject.toml change.
test-py3.10 test-py3.12:
	py="$$(tools/python-env $(patsubst test-py%,%,$@))" && "$$py" -m pytest -q -m "not slow" -p no:cacheprovider

# The ring's and the camera's tests on an arm64 Python under QEMU (Debian, root; builds its environment once
# under ~/.cache/emim-stream-arm64). Proves the code and its aarch64 wheels work, not weak memory ordering.
test-arm64:
	tools/test-arm64

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The documentation site from docs/ (reference pages generated from the code); strict: a broken link fails.
# NO_MKDOCS_2_WARNING silences the theme's banner about a future MkDocs release.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

ci: test-all lint docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info site

# Diffusion Studio: `make run` starts the app, `make test` runs every test headless.
# Both create .venv on first use and install everything they need into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch: small, and on this project's machines it comes from local disk.
# The package itself only asks for torch>=2.3; override TORCH_SPEC to get another build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/diffusion-studio

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build dist *.egg-info

# `make bundle`: a one-folder desktop bundle in dist/diffusion-studio/ (PyInstaller; no Python
# needed beside it), then its headless self-check. See packaging/README.md.
PYINSTALLER_SPEC ?= pyinstaller>=6.10
.PHONY: bundle
bundle: $(VENV)/.installed
	$(BIN)/python -m pip install "$(PYINSTALLER_SPEC)"
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/diffusion-studio.spec
	QT_QPA_PLATFORM=offscreen dist/diffusion-studio/diffusion-studio --self-check
	@du -sh dist/diffusion-studio

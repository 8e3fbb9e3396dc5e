# espnet2_speechlm: install, test, benchmark, demo.
#
#   make install      build tools/venv (seconds when already done)
#   make test         install if needed, then run the test suite
#   make bench        run the benchmarks (lines "NAME VALUE UNIT")
#   make demo         the small offline end-to-end recipe (egs2/mini_espeak)
#
# GPU users choose their own torch build, for example:
#   make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128" \
#                TORCHAUDIO_SPEC=torchaudio==2.13.0 TORCHAUDIO_PURE_PYTHON=0

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= tools/venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The PyPI torchaudio wheel is a CUDA build; beside the CPU torch it only runs
# with its compiled libraries removed (pure-Python mode: fbank, resample and
# MelSpectrogram work, which is all that espnet2's codec models need).
TORCHAUDIO_SPEC ?= torchaudio==2.11.0
TORCHAUDIO_PURE_PYTHON ?= 1
ESPNET_SPEC ?= espnet==202511
# pip prints a warning per package for local index mirrors (PIP_FIND_LINKS) that do not exist
QUIET_PIP := grep -v -e "is ignored: it is neither a file nor a directory" -e "dependency resolver does not currently take into account" -e "espnet 202511 requires setuptools" || true
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (0: one process); test/conftest.py keeps each file on one worker
PYTEST_WORKERS ?= 2

.PHONY: install test bench clean-venv demo

install: $(STAMP)

$(STAMP): tools/requirements.txt tools/constraints.txt setup.py Makefile
	@echo "[install] building $(VENV) ($(TORCH_SPEC))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q "pip<26.1" "setuptools>=77.0.3,<81" wheel 2>&1 | $(QUIET_PIP)
	@$(PIP) install -q $(TORCH_INDEX) "$(TORCH_SPEC)" 2>&1 | $(QUIET_PIP)
	@# espnet declares setuptools<74, which would make pip replace torch: no deps here,
	@# its run-time dependencies are listed in tools/requirements.txt instead.
	@$(PIP) install -q --no-deps "$(ESPNET_SPEC)" "$(TORCHAUDIO_SPEC)" 2>&1 | $(QUIET_PIP)
	@if [ "$(TORCHAUDIO_PURE_PYTHON)" = 1 ]; then rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/*.so; fi
	@DS_BUILD_OPS=0 $(PIP) install -q "$(TORCH_SPEC)" "setuptools>=77.0.3,<81" \
		-c tools/constraints.txt -r tools/requirements.txt 2>&1 | $(QUIET_PIP)
	@$(PIP) install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import torch, transformers, deepspeed, espnet2_speechlm" 2>/dev/null
	@touch $@
	@echo "[install] done: $$($(PY) -c 'import torch; print("torch", torch.__version__)')"

test: install
	@$(PY) -m pytest test -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: install
	@for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

# The small end-to-end recipe (offline, CPU, about 30 minutes on 2 cores).
# Needs the Debian package espeak-ng (installed by the recipe when run as root).
demo: install
	cd egs2/mini_espeak/speechlm1 && ./run.sh

clean-venv:
	rm -rf $(VENV)

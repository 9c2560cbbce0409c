# One place for the commands a newcomer, CI and the Docker image use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q

# TORCH=cpu (or a CUDA variant such as cu128): torch and torchaudio from PyTorch's own index for it, before the
# rest. cpu leaves out the CUDA libraries PyPI's Linux torch brings (nvidia-*, triton): torch took 5.3 GB
# installed with them, 0.75 GB without (torch 2.14 with CUDA 13 against the 2.13 CPU wheel, a 190 MB download).
# Where that index cannot be reached the default wheels come, with one line saying so; TORCH_FALLBACK=no (the
# Docker image) makes that an error instead. Left empty (CI, the default): PyPI's wheels, as always.
TORCH ?=
TORCH_INDEX_ROOT ?= https://download.pytorch.org/whl
TORCH_FALLBACK ?= yes
TORCH_INDEX := $(TORCH_INDEX_ROOT)/$(TORCH)
ifneq ($(filter-out cpu cu% rocm%,$(TORCH)),)
$(error TORCH=$(TORCH): use TORCH=cpu, a CUDA variant of PyTorch's index (e.g. TORCH=cu128), or leave it out)
endif

# The test suite's processes (pytest-xdist, one test file each at a time): one per core, each on one thread.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install deps torch test run clean

# The project, editable, with its test tools. `deps` first: then this step only adds the project itself.
install: deps
	$(PIP) -e '.[test,hear]'
	# librosa's pyin compiled and cached by one process, before any two can race on numba's cache (numba issue 10128)
	$(BIN)/python -c "import numpy, librosa; librosa.pyin(numpy.zeros(4096), fmin=60.0, fmax=500.0, sr=16000)"
	touch $(VENV)/.installed

# Only the dependencies pyproject.toml lists (and its `test` extra), read by docker/deps.py: no second
# list, and no source needed, so the Docker image runs it in a layer cached until pyproject.toml changes.
deps: $(BIN)/python $(if $(TORCH),torch)
	$(BIN)/python docker/deps.py --extra test --extra hear > $(VENV)/deps.txt
	$(PIP) -r $(VENV)/deps.txt

# torch and torchaudio as pyproject.toml asks for them, from $(TORCH_INDEX); `deps` then finds them in place.
# The index is tried for 10 s first (urllib: the slim image has no curl).
torch: $(BIN)/python
	$(BIN)/python docker/deps.py --only torch --only torchaudio > $(VENV)/torch.txt
	@if $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" \
	    "$(TORCH_INDEX)/torch/" 2>/dev/null; then \
	  echo "$(PIP) --index-url $(TORCH_INDEX) -r $(VENV)/torch.txt"; \
	  $(PIP) --index-url $(TORCH_INDEX) -r $(VENV)/torch.txt; \
	elif [ "$(TORCH_FALLBACK)" = no ]; then \
	  echo "make: TORCH=$(TORCH): $(TORCH_INDEX) is not reachable (TORCH_FALLBACK=no)" >&2; exit 1; \
	else \
	  echo "make: TORCH=$(TORCH): $(TORCH_INDEX) is not reachable: installing PyPI's default torch wheels instead"; \
	fi

# `make run` installs first only when the environment is missing or older than pyproject.toml.
$(VENV)/.installed: pyproject.toml
	$(MAKE) install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

test:
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations 15 tests

# The main command: corpus, tokenizer, training (the `audio` size on a GPU, the CPU demo size
# `small` otherwise), evaluation on the test split, dreams; it ends by saying where to look.
# CONFIGS picks other sections, e.g. make run CONFIGS="defaults audio tiny" (a minute: the tests' size).
CONFIGS ?= defaults audio
run: $(VENV)/.installed
	$(BIN)/python launch.py --configs $(CONFIGS) --auto_size

clean:
	rm -rf $(VENV) *.egg-info

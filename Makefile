# One place for the commands a newcomer, CI and the Docker image use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test run clean

install: $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(VENV)/.installed

# `make run` installs first only when the environment is missing or older than pyproject.toml.
$(VENV)/.installed: pyproject.toml
	$(MAKE) install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

test:
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests

# The main command: corpus, tokenizer, training (the `audio` size on a GPU, the CPU demo size
# `small` otherwise), evaluation on the test split, dreams; it ends by saying where to look.
run: $(VENV)/.installed
	$(BIN)/python launch.py --configs defaults audio --auto_size

clean:
	rm -rf $(VENV) *.egg-info

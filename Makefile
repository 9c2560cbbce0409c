# One place for the commands a newcomer, CI and the Docker image use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q

.PHONY: install deps test run clean

# The project, editable, with its test tools. `deps` first: then this step only adds the project itself.
install: deps
	$(PIP) -e '.[test,hear]'
	touch $(VENV)/.installed

# Only the dependencies pyproject.toml lists (and its `test` extra), read by docker/deps.py: no second
# list, and no source needed, so the Docker image runs it in a layer cached until pyproject.toml changes.
deps: $(BIN)/python
	$(BIN)/python docker/deps.py --extra test --extra hear > $(VENV)/deps.txt
	$(PIP) -r $(VENV)/deps.txt

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

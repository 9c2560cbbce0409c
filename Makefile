# One place for the commands a newcomer, CI and the Docker image use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q

.PHONY: install deps test run clean

# The project, editable, with its test tools. `deps` first: then this step only adds the project itself.
install: deps
	$(PIP) -e '.[test]'

# Only the dependencies pyproject.toml lists (and its `test` extra), read by docker/deps.py: no second
# list, and no source needed, so the Docker image runs it in a layer cached until pyproject.toml changes.
deps: $(BIN)/python
	$(BIN)/python docker/deps.py --extra test > $(VENV)/deps.txt
	$(PIP) -r $(VENV)/deps.txt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

test:
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests

run:
	$(BIN)/python launch.py --configs defaults audio

clean:
	rm -rf $(VENV) *.egg-info

# One place for the commands a newcomer, CI and the Docker image use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test run clean

install: $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

test:
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests

run:
	$(BIN)/python launch.py --configs defaults audio

clean:
	rm -rf $(VENV) *.egg-info

# Two entry points: `make demo` (the main job, end to end) and `make test`.
# Each creates .venv when missing and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO := demo

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check fdn hashindex cli benchmarks tests

demo: $(STAMP)
	$(VENV)/bin/fdn-index synth $(DEMO)/archive --cases 6 --size 64 --seed 0
	$(VENV)/bin/fdn-index show $(DEMO)/archive/$$(ls $(DEMO)/archive | head -1) -o $(DEMO)/preview.png
	@echo "Preview: $(DEMO)/preview.png"

clean:
	rm -rf $(DEMO) .pytest_cache

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test lint demo venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	$(PY) -m pip install -q -e ".[test,serve,export,peers]"
	touch $@

venv: $(VENV)/.installed

# .ci/ensure-browser installs the browser test's Chromium when it can (root or sudo, apt-get);
# where it cannot, that one test is skipped with the reason (a failure under CI=true)
# the lint CI runs before the tests: ruff's checks and its formatting (settings in pyproject.toml)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.installed
	bash .ci/ensure-browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -ra

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m maco_cxr demo --out demo-report

clean:
	rm -rf $(VENV) demo-report .pytest_cache

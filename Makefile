# Two commands do all the set-up:  `make run` (the app on the demo data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-dev.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-12)
PORT ?= 8501

.PHONY: setup run test test-all test-browser bench clean
BROWSER_STAMP := $(VENV)/.browser-$(shell cat requirements-browser.txt | sha256sum | cut -c1-12)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

## run: featurize the bundled demo set (cached after the first run), then serve the app
run: setup
	$(PY) -m workbench featurize
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

## test: the default suite (no slow, GPU or browser tests)
test: setup
	$(PY) -m pytest -m "not slow and not gpu and not browser"

$(BROWSER_STAMP): requirements-browser.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-browser.txt
	rm -f $(VENV)/.browser-* && touch $@

## test-browser: the app driven in headless Debian Chromium (apt-get install chromium first)
test-browser: setup $(BROWSER_STAMP)
	@test -x /usr/bin/chromium || { echo "install Chromium first: apt-get install chromium" >&2; exit 1; }
	$(PY) -c "import playwright.sync_api"
	$(PY) -m pytest -m browser --durations=5

test-all: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/featurize.py
	$(PY) benchmarks/train.py

clean:
	rm -rf artifacts .pytest_cache

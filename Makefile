# Two commands do all the set-up:  `make run` (the app on the demo data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-dev.txt requirements-serve.txt requirements-scale.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-12)
PORT ?= 8501

.PHONY: setup run test test-all test-browser test-slow test-spark serve bench clean lint format
SPARK_STAMP := $(VENV)/.spark-$(shell cat requirements-spark.txt | sha256sum | cut -c1-12)
API_PORT ?= 8000
BROWSER_STAMP := $(VENV)/.browser-$(shell cat requirements-browser.txt | sha256sum | cut -c1-12)

# PyTorch's CUDA build with its libraries is most of the environment (about 7 GiB in all): check the disk first
SETUP_FREE_GIB ?= 8
$(STAMP): $(REQS)
	@ls -d $(VENV)/lib/python*/site-packages/torch >/dev/null 2>&1 || $(PYTHON) -c 'import shutil, sys; \
	free = shutil.disk_usage(".").free / 2**30; \
	free >= $(SETUP_FREE_GIB) or sys.exit(f"make setup: only {free:.1f} GiB free on the disk of $(CURDIR); the environment needs about $(SETUP_FREE_GIB) GiB (PyTorch and its CUDA libraries). Free some space, or run with SETUP_FREE_GIB=0 to try anyway.")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

## run: featurize the bundled demo set, fit the quick learned rankers (svm, projection) where missing or stale
## (both cached after the first run), then serve the app
run: setup
	@echo "featurizing the dataset and fitting the svm and projection rankers where needed (under a minute the first time for the demo)"
	$(PY) -m workbench fit --missing $(if $(WORKBENCH_DATA),--data "$(WORKBENCH_DATA)") $(if $(WORKBENCH_WORKDIR),--workdir "$(WORKBENCH_WORKDIR)")
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

## lint: ruff (rules in pyproject.toml), ruff format --check, mypy; all must be clean
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## format: apply ruff's formatter and safe fixes
format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## test: the default suite (no slow, GPU, browser or Spark tests)
test: setup
	$(PY) -m pytest -m "not slow and not gpu and not browser and not spark"

## test-slow: longer tests (schema-driven fuzzing of the REST API)
test-slow: setup
	$(PY) -m pytest -m "slow and not browser and not spark" --durations=5

$(SPARK_STAMP): requirements-spark.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-spark.txt
	rm -f $(VENV)/.spark-* && touch $@

## test-spark: Spark local-mode tests (apt-get install openjdk-17-jre-headless first)
test-spark: setup $(SPARK_STAMP)
	@command -v java >/dev/null || { echo "install Java first: apt-get install openjdk-17-jre-headless" >&2; exit 1; }
	$(PY) -m pytest -m spark --durations=5

## serve: the REST service on 127.0.0.1:$(API_PORT) (OpenAPI document at /openapi.json)
serve: setup
	$(PY) -m workbench serve --port $(API_PORT)

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
	$(PY) benchmarks/index.py --sizes 10000 100000 --dims 512

clean:
	rm -rf artifacts .pytest_cache

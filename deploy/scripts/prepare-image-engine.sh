#!/usr/bin/env bash
# Prepare a Debian host to build and run the whisper-guard images with podman, no registry needed:
#
#   sudo deploy/scripts/prepare-image-engine.sh             # engine + local base (once: ~3 min)
#   deploy/scripts/prepare-image-engine.sh --check          # ready? exit 0, else 1 and the reason
#   deploy/scripts/prepare-image-engine.sh --optional       # what `make test` runs: never fails
#
# 1. installs podman, runc and debootstrap with apt-get (when missing);
# 2. writes /etc/containers/containers.conf.d/50-whisper-guard.conf: runc as the runtime (crun
#    refuses hybrid cgroup v1/v2 hosts), no default ulimits (sandboxed VMs refuse setrlimit of
#    RLIMIT_NOFILE), cgroupfs and file events (no systemd needed);
# 3. builds a Debian bookworm minbase root with python3, python3-venv and ca-certificates by
#    debootstrap, trims it (apt lists and caches, docs, man pages, locales) and imports it with
#    `podman import` as $WHISPER_GUARD_BASE_IMAGE. It stands in for python:3.11-slim-bookworm
#    through the Dockerfile's PYTHON_IMAGE build arg (bookworm's python3 is 3.11). An image of
#    that name built from the same recipe is reused, so a second run takes a second.
#
# Then build the CPU image with deploy/scripts/build-image.sh (or run `make test-image`).
# Undo: apt-get purge podman debootstrap; rm the .conf above; podman rmi the base.
#
# Environment: WHISPER_GUARD_BASE_IMAGE (default localhost/whisper-guard-base:bookworm),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

base="${WHISPER_GUARD_BASE_IMAGE:-localhost/whisper-guard-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
conf=/etc/containers/containers.conf.d/50-whisper-guard.conf
lock=/var/lock/whisper-guard-image-engine.lock
packages=(podman runc debootstrap)
include=python3,python3-venv,ca-certificates
# The base's identity: a base built from another recipe (or suite) is rebuilt, not reused.
recipe="bookworm minbase include=$include trim=v1"
recipe_id="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
label=org.whisper-guard.base-recipe

mode=prepare
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --optional) mode=optional ;;
  -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
  *) echo "prepare-image-engine: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

log() { echo "prepare-image-engine: $*" >&2; }

read -r -d '' conf_text <<'EOF' || true
# Written by whisper-guard's deploy/scripts/prepare-image-engine.sh (safe to delete).
[containers]
# Sandboxed VMs refuse setrlimit(RLIMIT_NOFILE) inside containers: set no default ulimits.
default_ulimits = []

[engine]
# crun refuses hybrid cgroup v1/v2 hosts; runc runs on them.
runtime = "runc"
# No systemd needed: cgroupfs and a file for events.
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

base_recipe() { podman image inspect --format "{{ index .Config.Labels \"$label\" }}" "$base" 2>/dev/null || true; }

# Why the engine is not ready (empty when it is).
not_ready() {
  local p
  for p in "${packages[@]}"; do
    command -v "$p" >/dev/null 2>&1 || { echo "$p is not installed"; return; }
  done
  [ -f "$conf" ] && [ "$(cat "$conf")" = "$conf_text" ] || { echo "$conf is missing or out of date"; return; }
  [ "$(base_recipe)" = "$recipe_id" ] || { echo "base image $base (recipe $recipe_id) is not imported"; return; }
  podman info >/dev/null 2>&1 || { echo "podman info fails: $(podman info 2>&1 | tail -n1)"; return; }
}

if [ "$mode" = check ]; then
  why="$(not_ready)"
  if [ -n "$why" ]; then echo "$why; run: sudo deploy/scripts/prepare-image-engine.sh"; exit 1; fi
  echo "ready: podman $(podman version --format '{{.Client.Version}}'), base $base"
  exit 0
fi

# Everything below needs root (apt-get, /etc/containers, rootful podman storage).
if [ "$(id -u)" -ne 0 ]; then
  if [ "$mode" = optional ]; then
    [ -z "$(not_ready)" ] && exit 0
    log "skipped (needs root for apt-get and podman): the image test will skip"; exit 0
  fi
  command -v sudo >/dev/null 2>&1 || { log "needs root (or sudo)"; exit 1; }
  exec sudo --preserve-env=WHISPER_GUARD_BASE_IMAGE,DEBIAN_MIRROR "$0" "$@"
fi

fail() {
  if [ "$mode" = optional ]; then log "skipped: $*; the image test will skip"; exit 0; fi
  log "$*"; exit 1
}

# One preparation at a time (two `make test` at once would race on apt and on the base).
exec 9>"$lock"
flock -w 1200 9 || fail "another preparation holds $lock"

[ -z "$(not_ready)" ] && exit 0

missing=()
for p in "${packages[@]}"; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || fail "${missing[*]} missing and no apt-get (not Debian?)"
  log "installing ${missing[*]} with apt-get"
  apt_log=$(mktemp)
  if ! { apt-get -o DPkg::Lock::Timeout=600 update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
              --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2; rm -f "$apt_log"
    fail "apt-get install ${missing[*]} failed"
  fi
  rm -f "$apt_log"
fi

if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$conf_text" ]; then
  mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$conf_text" >"$conf"
  log "wrote $conf"
fi

if [ "$(base_recipe)" != "$recipe_id" ]; then
  root="$(mktemp -d /var/tmp/whisper-guard-base.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  log "debootstrap bookworm into $root (about 2 minutes)"
  if ! debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2; rm -f "$root.log"
    fail "debootstrap failed (mirror $mirror)"
  fi
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
         "$root"/var/log/* "$root"/tmp/*
  tar --numeric-owner -C "$root" -c . | podman import \
      --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV=LANG=C.UTF-8' \
      --change "LABEL=$label=$recipe_id" \
      --change 'CMD=["python3"]' \
      --message "debootstrap $recipe" --quiet - "$base" >/dev/null \
    || fail "podman import of the base failed"
  log "imported $base ($(podman run --rm "$base" python3 --version 2>&1 | tail -n1))"
fi

why="$(not_ready)"
[ -z "$why" ] || fail "$why"
log "ready: podman $(podman version --format '{{.Client.Version}}'), base $base"

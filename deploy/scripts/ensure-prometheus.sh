#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for the test suite (Debian/Ubuntu, as root in CI).
# Idempotent and quiet: does nothing when both are on PATH. Never starts the system service:
# the tests run their own prometheus on 127.0.0.1 with a temporary TSDB.
#
# PROMETHEUS=/path/to/prometheus uses that binary instead (and promtool beside it, or
# PROMTOOL=/path/to/promtool): nothing is installed, and the tests use the same binaries.
set -euo pipefail

if [ -n "${PROMETHEUS:-}" ]; then
  promtool="${PROMTOOL:-$(dirname "$PROMETHEUS")/promtool}"
  for bin in "$PROMETHEUS" "$promtool"; do
    [ -x "$bin" ] || { echo "ensure-prometheus: $bin is not an executable (from PROMETHEUS/PROMTOOL)" >&2; exit 1; }
  done
  exit 0
fi

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-prometheus: prometheus/promtool missing and no apt-get; install them by hand" >&2
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "ensure-prometheus: need root or sudo" >&2; exit 1; }
  sudo="sudo"
fi

# policy-rc.d exit 101 = "do not start services" for invoke-rc.d during the install.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

log=$(mktemp)
if ! { $sudo apt-get update -qq \
       && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
     >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "ensure-prometheus: apt-get install prometheus failed" >&2
  exit 1
fi
rm -f "$log"

command -v prometheus >/dev/null && command -v promtool >/dev/null
echo "ensure-prometheus: installed $(prometheus --version 2>&1 | head -n1)"

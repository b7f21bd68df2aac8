"""The CPU image's figures: build time, size (and what fills it), start to SERVING, idle memory.

    sudo deploy/scripts/prepare-image-engine.sh      # once: podman + the local bookworm base
    .venv/bin/python benchmarks/image.py             # builds MODELS=tiny.en, runs it 3 times
    .venv/bin/python benchmarks/image.py --image localhost/whisper-guard:0.1.0-cpu --starts 5

The container runs as deploy/k8s/base/deployment.yaml runs the sidecar (tests/image_fixtures.py:
uid 10001, read-only root, tmpfs /tmp, no capabilities, the manifest's env and limits).
"Start to SERVING" is from the `podman run` call to the first SERVING health reply on the
published port; "idle" is 5 s after one Transcribe. Writes benchmarks/results/image-cpu.json
and .md. Timings on a shared host are noisy: the median of --starts runs is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from guard.client import GuardClient  # noqa: E402
from image_fixtures import (Container, build_image, engine_not_ready, image_size, podman, remove_image,  # noqa: E402
                            unique_name, wait_serving)

RESULTS = ROOT / "benchmarks" / "results"
SPEECH = ROOT / "tests" / "fixtures" / "speech-agent-alreadyon.flac"


def contents(tag: str) -> dict:
    """MB of the base system, of /opt/whisper-guard and of its largest site-packages entries."""
    script = ("cd /opt/whisper-guard/lib/python3*/site-packages && du -sk * | sort -n | tail -12; "
              "echo TOTAL $(du -sk /opt/whisper-guard | cut -f1); "
              "echo PYC $(find /opt/whisper-guard -name __pycache__ -type d -prune -exec du -sk {} + | "
              "awk '{s+=$1} END {print s}')")
    out = podman("run", "--rm", "--entrypoint", "sh", tag, "-c", script, timeout=120).stdout.split("\n")
    top, total, pyc = {}, 0, 0
    for line in out:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "TOTAL":
            total = int(parts[1])
        elif len(parts) == 2 and parts[0] == "PYC":
            pyc = int(parts[1])
        elif len(parts) == 2 and parts[0].isdigit():
            top[parts[1]] = round(int(parts[0]) / 1024, 1)
    return {"opt_whisper_guard_mb": round(total / 1024, 1), "bytecode_mb": round(pyc / 1024, 1),
            "largest_site_packages_mb": dict(sorted(top.items(), key=lambda kv: -kv[1]))}


def cpu_seconds(c: Container) -> float:
    text = urllib.request.urlopen(c.metrics_url, timeout=30).read().decode()
    return float(re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M).group(1))


def one_start(tag: str) -> dict:
    c = Container(tag)
    try:
        c.start()
        with GuardClient(c.grpc_address, timeout=120) as client:
            serving = wait_serving(client, c)
            cpu = cpu_seconds(c)  # the guard's own CPU time to SERVING: what load on the host does not inflate
            t0 = time.monotonic()
            client.transcribe(SPEECH)
            first_call = time.monotonic() - t0
            time.sleep(5)
            memory = c.memory_bytes()
        return {"start_to_serving_s": round(serving, 2), "cpu_to_serving_s": round(cpu, 2),
                "first_transcribe_s": round(first_call, 2),
                "idle_cgroup_mb": round(memory["cgroup"] / 1e6), "idle_rss_mb": round(memory["rss"] / 1e6)}
    finally:
        c.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", help="measure this image instead of building one")
    ap.add_argument("--extras", default="", help="MODEL_EXTRAS for the build (default: none)")
    ap.add_argument("--models", default="tiny.en", help="MODELS for the build")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the image built here")
    ap.add_argument("--suffix", default="", help="appended to the results' file names")
    args = ap.parse_args()

    if why := engine_not_ready():
        print(f"image.py: {why}", file=sys.stderr)
        return 1
    tag, built = args.image, None
    if tag is None:
        tag = f"localhost/{unique_name('whisper-guard-bench')}:cpu"
        seconds, _ = build_image(tag, extras=args.extras, models=args.models)
        built = round(seconds)
        print(f"built {tag} in {built} s")
    try:
        size = image_size(tag)
        base = podman("image", "inspect", "--format", "{{.Size}}",
                      os.environ.get("WHISPER_GUARD_BASE_IMAGE", "localhost/whisper-guard-base:bookworm")).stdout
        what = contents(tag)
        runs = [one_start(tag) for _ in range(args.starts)]
    finally:
        if built is not None and not args.keep:
            remove_image(tag)

    def median(key):
        return statistics.median(r[key] for r in runs)

    result = {
        "image": tag if args.image else f"Dockerfile.cpu MODEL_EXTRAS={args.extras!r} MODELS={args.models}",
        "host": f"{platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "build_seconds": built,
        "image_mb": round(size / 1e6), "base_mb": round(int(base) / 1e6), **what,
        "start_to_serving_s": median("start_to_serving_s"), "cpu_to_serving_s": median("cpu_to_serving_s"),
        "idle_rss_mb": median("idle_rss_mb"),
        "idle_cgroup_mb": median("idle_cgroup_mb"), "first_transcribe_s": median("first_transcribe_s"),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"image-cpu{args.suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [("image size", f"{result['image_mb']} MB (base {result['base_mb']} MB, /opt/whisper-guard "
                           f"{result['opt_whisper_guard_mb']} MB of which bytecode {result['bytecode_mb']} MB)"),
            ("build from cold (base cached, pip installs everything)", f"{built} s" if built is not None else "not built here"),
            (f"start to SERVING (median of {len(runs)})", f"{result['start_to_serving_s']} s"),
            ("guard CPU time to SERVING (process_cpu_seconds_total)", f"{result['cpu_to_serving_s']} s"),
            ("first Transcribe (5.4 s clip)", f"{result['first_transcribe_s']} s"),
            ("memory at idle: guard RSS", f"{result['idle_rss_mb']} MB"),
            ("memory at idle: container cgroup (podman stats)", f"{result['idle_cgroup_mb']} MB")]
    md = [f"# CPU image ({result['image']})", "", f"Host: {result['host']}.", "", "| figure | value |", "|---|---|",
          *[f"| {k} | {v} |" for k, v in rows], "", "Largest site-packages entries (MB): "
          + ", ".join(f"{k} {v}" for k, v in result["largest_site_packages_mb"].items()), ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

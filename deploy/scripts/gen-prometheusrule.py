#!/usr/bin/env python3
"""Generate deploy/k8s/base/prometheusrule.yaml (Prometheus Operator CRD) from
deploy/prometheus/alerts.yml, so the two can never disagree.

    python deploy/scripts/gen-prometheusrule.py          # rewrite the manifest
    python deploy/scripts/gen-prometheusrule.py --check  # exit 1 if it is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
MANIFEST = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/scripts/gen-prometheusrule.py; do not edit.
# kube-prometheus-stack picks up PrometheusRules whose `release` label matches its release
# name (or all of them with ruleSelectorNilUsesHelmValues=false): adjust the label to yours.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts_text: str) -> str:
    groups = yaml.safe_load(alerts_text)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "whisper-guard",
            "labels": {
                "app.kubernetes.io/name": "whisper-guard",
                "app.kubernetes.io/component": "monitoring",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the manifest differs from a fresh render")
    args = ap.parse_args()
    text = render(ALERTS.read_text())
    if args.check:
        if MANIFEST.read_text() != text:
            print(f"{MANIFEST} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

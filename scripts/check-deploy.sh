#!/usr/bin/env bash
# Static checks of deploy/: the Prometheus rules with promtool (syntax and unit tests), the
# Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate, from PyPI,
# in a virtualenv under target/), and scripts/check-deploy.py (parsing, settings that
# exist, probes, grace periods, selectors). Needs scripts/ensure-deploy-tools.sh first and
# a built gateway binary (default: target/debug/realtime-gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/realtime-gateway}"

promtool check rules deploy/prometheus/realtime-gateway.rules.yml
(cd deploy/prometheus && promtool test rules realtime-gateway.rules.test.yml)

venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
# The oldest Kubernetes these manifests are meant for, and the newest the schemas know.
for version in 1.29.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" \
    deploy/kubernetes/{deployment,service,poddisruptionbudget,ingress,secret.example}.yaml
done

/usr/bin/python3 scripts/check-deploy.py "$binary"

#!/usr/bin/env bash
# Makes sure the tools the deployment checks and tests run are installed, from Debian:
# nginx and HAProxy (the shipped load-balancer configurations run in front of real
# gateways), Prometheus and promtool (the shipped rules), and PyYAML and venv for python3
# (the Kubernetes manifests). The tests start their own private instances on loopback; the
# packages' system services are never used, and are kept from starting where that can be
# done without systemd.
set -euo pipefail

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || missing+=(prometheus)
/usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
# The Kubernetes schema check runs from a virtualenv.
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A policy-rc.d that denies every start keeps the packages' services down while they are
# installed (Debian's invoke-rc.d asks it); it is removed again unless it was there before.
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
  added_policy=1
fi
cleanup() { if [ -n "$added_policy" ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

echo "ensure-deploy-tools: installing Debian's ${missing[*]}" >&2
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
  -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null

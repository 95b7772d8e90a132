#!/usr/bin/env python3
"""Static checks of deploy/: every YAML and JSON file parses; every GATEWAY_* setting that
any file there names exists in the gateway (as `realtime-gateway --help` lists them); the
Kubernetes manifests keep the promises the README makes (probes on the right endpoints, a
termination grace above the drain grace, selectors that match, the connection alert in step
with the connection limit); the proxies' stream timeouts are above the gateway's ping and
keep-alive intervals; the dashboard imports cleanly.

Usage: check-deploy.py <path to the realtime-gateway binary>
"""

import json
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def load_yaml(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{path.relative_to(ROOT)}: not YAML: {e}")
        return []


def settings_from_help(binary):
    """Every setting `--help` lists, with its default (None when unset)."""
    out = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
    settings = {}
    for name, default in re.findall(r"(GATEWAY_[A-Z0-9_]+)\n.*\n\s+default: (.*)", out):
        settings[name] = None if default == "(unset)" else default
    return settings


def check_proxy_timeouts(known):
    """Every proxy timeout that can end a quiet stream is longer than the longest quiet gap
    the gateway leaves by default (WebSocket pings, SSE keep-alive comments)."""
    gap = max(int(known["GATEWAY_WS_PING_INTERVAL_SECS"]), int(known["GATEWAY_SSE_KEEPALIVE_SECS"]))
    nginx = (DEPLOY / "nginx" / "realtime-gateway.conf").read_text()
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    ingress = (DEPLOY / "kubernetes" / "ingress.yaml").read_text()
    found = {
        "nginx " + k: v
        for k, v in re.findall(r"^\s*(proxy_read_timeout|proxy_send_timeout|send_timeout) (\d+)s;", nginx, re.M)
    }
    found.update(
        ("haproxy timeout " + k, v)
        for k, v in re.findall(r"^\s*timeout (client|server|tunnel) (\d+)s$", haproxy, re.M)
    )
    found.update(
        ("ingress " + k, v)
        for k, v in re.findall(r"(proxy-read-timeout|proxy-send-timeout): \"(\d+)\"", ingress)
    )
    check(len(found) == 8, f"expected 8 stream timeouts in the proxy configurations, found {sorted(found)}")
    for what, secs in found.items():
        check(int(secs) > gap, f"{what} {secs}s is not above the gateway's {gap}s ping/keep-alive interval")


def check_dashboard(dash):
    """What Grafana needs to import the dashboard anywhere: unique panel ids, a query on
    every panel, and every panel on the data source chosen at import."""
    variables = {v["name"] for v in dash["templating"]["list"]}
    check({"datasource", "instance"} <= variables, "dashboard needs datasource and instance variables")
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), "dashboard panel ids must be unique")
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        title = p.get("title", "?")
        check(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {title}: not on ${{datasource}}")
        targets = p.get("targets", [])
        check(targets and all(t.get("expr") for t in targets), f"panel {title}: no query")
        check(all('instance=~"$instance"' in t["expr"] for t in targets), f"panel {title}: ignores $instance")


def main():
    known = settings_from_help(sys.argv[1])
    check(len(known) > 40, f"--help lists only {len(known)} settings?")
    check_proxy_timeouts(known)

    # Every file parses, and every setting any file names exists.
    docs = {}
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(ROOT)
        if path.suffix in (".yaml", ".yml"):
            docs[rel.as_posix()] = load_yaml(path)
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError as e:
                problems.append(f"{rel}: not JSON: {e}")
        for name in sorted(set(re.findall(r"\bGATEWAY_[A-Z0-9_]+\b", path.read_text()))):
            check(name in known, f"{rel}: {name} is not a gateway setting")

    check_dashboard(json.loads((DEPLOY / "grafana" / "realtime-gateway.json").read_text()))

    manifests = [d for f, ds in docs.items() if f.startswith("deploy/kubernetes/") for d in ds]
    by_kind = {}
    for d in manifests:
        check("kind" in d and "apiVersion" in d, f"manifest without kind/apiVersion: {d}")
        by_kind.setdefault(d.get("kind"), []).append(d)
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "Ingress"):
        check(len(by_kind.get(kind, [])) == 1, f"expected one {kind} in deploy/kubernetes/")
    if problems:
        return

    deployment = by_kind["Deployment"][0]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    for name in env:
        check(name in known, f"Deployment env {name} is not a gateway setting")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness must probe /readyz")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness must probe /healthz")
    grace = int(env.get("GATEWAY_SHUTDOWN_GRACE_SECS") or 10)
    drain = int(env.get("GATEWAY_SHUTDOWN_DRAIN_SECS") or 3)
    check(drain < grace, "GATEWAY_SHUTDOWN_DRAIN_SECS must be less than the grace")
    check(
        pod["spec"]["terminationGracePeriodSeconds"] > grace,
        "terminationGracePeriodSeconds must be above GATEWAY_SHUTDOWN_GRACE_SECS",
    )
    check("requests" in container.get("resources", {}), "the container needs resource requests")
    port_names = {p["name"] for p in container["ports"]}
    check(deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(),
          "Deployment selector must match its pod labels")

    service = by_kind["Service"][0]
    check(service["spec"]["selector"].items() <= labels.items(), "Service selector must match the pods")
    for p in service["spec"]["ports"]:
        check(p["targetPort"] in port_names or isinstance(p["targetPort"], int),
              f"Service targetPort {p['targetPort']} is not a container port")
    service_ports = {p["name"] for p in service["spec"]["ports"]}

    pdb = by_kind["PodDisruptionBudget"][0]
    check(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selector must match the pods")

    ingress = by_kind["Ingress"][0]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            check(backend["name"] == service["metadata"]["name"], f"Ingress backend {backend['name']} is not the Service")
            check(backend["port"].get("name") in service_ports, f"Ingress backend port {backend['port']} not on the Service")
    annotations = ingress["metadata"].get("annotations", {})
    check(annotations.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", "Ingress must turn SSE buffering off")

    # The connection-limit alert fires at 80 % of the Deployment's limit.
    limit = int(env.get("GATEWAY_MAX_CONNECTIONS") or 0)
    rules = [r for d in docs["deploy/prometheus/realtime-gateway.rules.yml"] for g in d["groups"] for r in g["rules"]]
    near = next(r for r in rules if r.get("alert") == "GatewayConnectionLimitNear")
    threshold = int(re.search(r">\s*(\d+)", near["expr"]).group(1))
    check(threshold == limit * 8 // 10,
          f"GatewayConnectionLimitNear threshold {threshold} is not 80 % of GATEWAY_MAX_CONNECTIONS {limit}")


main()
if problems:
    print("deploy/ checks failed:", *problems, sep="\n  - ", file=sys.stderr)
    sys.exit(1)
print("deploy/ checks passed", file=sys.stderr)

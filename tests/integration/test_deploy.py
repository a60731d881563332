"""Deployment artefacts, validated offline (no Docker engine, Kubernetes or Kong
needed): kong/kong.yml against decK and the OpenAPI contracts in proto/, the Helm
chart (lint, template, schema, kube-score), k8s/ against the chart, the
docker-compose stack, the Dockerfile, and the Prometheus/Grafana/Fluent Bit files.

helm and kube-score are Go modules built once by scripts/tools.sh into
~/.cache/robot-fleet/bin (the first run takes a few minutes); deck,
docker-compose and promtool are Debian packages from scripts/deps.sh.
Every checker here is also run against a broken input to show it can fail."""

import copy
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import BIN, free_port, http

ROOT = pathlib.Path(__file__).resolve().parents[2]
KONG = ROOT / "kong" / "kong.yml"
OPENAPI_DIR = ROOT / "proto" / "openapi"
CHART = ROOT / "helm" / "robot-fleet"
PROD_VALUES = CHART / "values-production.yaml"
COMPOSE = ROOT / "docker-compose.yml"
KUBE_VERSION = "1.30.0"   # helm built by `go install` defaults to v1.20 for --kube-version
SERVICES = {
    "webhook-ingest": 8081,
    "robot-registry": 8082,
    "reboot-command": 8083,
    "config-center": 8084,
    "stream-processor": 8085,
}
OPS_PATHS = {"/healthz", "/readyz", "/metrics"}
WEBHOOK_TEMPLATE = "/v1/webhooks/{source}"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
ACL_GROUPS = {"viewers", "operators", "admins"}
IDENTITY_HEADERS = {"x-consumer-id", "x-consumer-custom-id", "x-consumer-username",
                    "x-consumer-groups", "x-credential-identifier", "x-anonymous-consumer",
                    "x-authenticated-groups", "x-gateway-token"}
DUMMY_ENV = {
    "SECRETS_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "DECK_GATEWAY_TOKEN": "test-gateway-token-0123456789",
    "DECK_VIEWER_KEY": "test-viewer-key-0123456789",
    "DECK_OPERATOR_KEY": "test-operator-key-0123456789",
    "DECK_ADMIN_KEY": "test-admin-key-0123456789",
}


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 600)
    return subprocess.run([str(c) for c in cmd], **kw)


def need(tool):
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: run `make deps` (scripts/deps.sh installs it)"
    return path


# ---- Go-module tools (helm, kube-score) ---------------------------------------------

@pytest.fixture(scope="session")
def tools():
    res = run([ROOT / "scripts" / "tools.sh", "install"], timeout=1800)
    assert res.returncode == 0, f"scripts/tools.sh install failed:\n{res.stderr[-3000:]}"
    bindir = pathlib.Path(run([ROOT / "scripts" / "tools.sh", "bin"]).stdout.strip())
    return {"helm": bindir / "helm", "kube-score": bindir / "kube-score"}


def helm_template(tools, *args, release="robot-fleet", namespace="robot-fleet"):
    res = run([tools["helm"], "template", release, CHART, "--namespace", namespace,
               "--kube-version", KUBE_VERSION, *args])
    assert res.returncode == 0, f"helm template {' '.join(map(str, args))} failed:\n{res.stderr}"
    return res.stdout


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def rendered(tools):
    """kind/name -> object, for default and production values (CRDs present for the latter)."""
    out = {}
    for label, args in {
        "default": [],
        "production": ["-f", PROD_VALUES,
                       "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
                       "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
                       "--api-versions", "kafka.strimzi.io/v1beta2/KafkaTopic"],
    }.items():
        text = helm_template(tools, *args)
        out[label] = {"text": text, "objs": {(d["kind"], d["metadata"]["name"]): d for d in docs(text)}}
    return out


# ---- OpenAPI operations -------------------------------------------------------------

def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def resolve_path_item(item, base):
    """Follows a path item's `$ref` (relative file + JSON pointer)."""
    while isinstance(item, dict) and "$ref" in item:
        ref = item["$ref"]
        file_part, _, pointer = ref.partition("#")
        target = (base.parent / file_part) if file_part else base
        node = load_yaml(target)
        for tok in pointer.lstrip("/").split("/"):
            if tok:
                node = node[tok.replace("~1", "/").replace("~0", "~")]
        item, base = node, target
    return item


def service_operations(service, spec=None):
    """{(METHOD, path template): operation} of one service's OpenAPI file."""
    path = OPENAPI_DIR / f"{service}.yaml"
    spec = spec if spec is not None else load_yaml(path)
    ops = {}
    for tmpl, item in (spec.get("paths") or {}).items():
        item = resolve_path_item(item, path)
        for m in METHODS:
            if m in item:
                ops[(m.upper(), tmpl)] = item[m]
    return ops


def kong_path(template):
    """The Kong 3.x route path for an OpenAPI path template: anchored regex."""
    return "~" + re.sub(r"\{[^/{}]+\}", "[^/]+", template) + "$"


def webhook_delivery_contract():
    """The delivery contract of POST /v1/webhooks/{source}: the vendor's outgoing
    webhook (vendor-platform.yaml `webhooks.robotEvents.post`), whose description
    names our endpoint. Used until webhook-ingest.yaml declares the path itself."""
    doc = load_yaml(OPENAPI_DIR / "vendor-platform.yaml")
    op = doc["webhooks"]["robotEvents"]["post"]
    assert WEBHOOK_TEMPLATE in op["description"]
    return op


# ---- Kong checks (pure functions, so they can be run on broken copies) -------------------

def kong_routes(cfg):
    """Yields (service name, route) for routes nested in services or top-level with `service`."""
    for svc in cfg.get("services") or []:
        for r in svc.get("routes") or []:
            yield svc["name"], r
    for r in cfg.get("routes") or []:
        yield r.get("service", {}).get("name") if isinstance(r.get("service"), dict) else r.get("service"), r


def route_plugins(cfg, svc_name, route):
    """Effective plugins of a route by name: route > service > global (Kong's precedence)."""
    eff = {}
    for p in cfg.get("plugins") or []:
        if not p.get("route") and not p.get("service") and not p.get("consumer"):
            eff[p["name"]] = p
    for svc in cfg.get("services") or []:
        if svc["name"] == svc_name:
            for p in svc.get("plugins") or []:
                eff[p["name"]] = p
    for p in cfg.get("plugins") or []:
        if p.get("service") == svc_name and not p.get("route"):
            eff[p["name"]] = p
    for p in route.get("plugins") or []:
        eff[p["name"]] = p
    for p in cfg.get("plugins") or []:
        if p.get("route") == route.get("name"):
            eff[p["name"]] = p
    return eff


def check_routes_resolve(cfg, ops_of=service_operations):
    """Every route (path, method) is an operation of its service's OpenAPI file (the
    webhook route may resolve to the vendor's delivery contract). Returns problems."""
    problems = []
    for svc_name, r in kong_routes(cfg):
        if svc_name not in SERVICES:
            problems.append(f"route {r.get('name')}: unknown service {svc_name!r}")
            continue
        ops = ops_of(svc_name)
        by_path = {kong_path(t): t for (_, t) in ops}
        methods = r.get("methods") or []
        if not methods:
            problems.append(f"route {r.get('name')}: no methods (would match every method)")
        if not r.get("paths"):
            problems.append(f"route {r.get('name')}: no paths")
        if r.get("strip_path", True):
            problems.append(f"route {r.get('name')}: strip_path must be false (paths are the service's own)")
        for p in r.get("paths") or []:
            tmpl = by_path.get(p)
            for m in methods:
                if tmpl and (m, tmpl) in ops:
                    if tmpl in OPS_PATHS:
                        problems.append(f"route {r.get('name')}: {m} {tmpl} is operational, not for Kong")
                    continue
                if (svc_name == "webhook-ingest" and p == kong_path(WEBHOOK_TEMPLATE) and m == "POST"
                        and webhook_delivery_contract()):
                    continue
                problems.append(f"route {r.get('name')}: {m} {p} is no operation of proto/openapi/{svc_name}.yaml")
    return problems


def is_admin_operation(tmpl):
    return tmpl not in OPS_PATHS and tmpl != WEBHOOK_TEMPLATE


def check_admin_operations_protected(cfg, ops_of=service_operations):
    """Every non-operational operation in proto/ has a route with key-auth + acl,
    reads allowed to viewers and writes not. Returns problems."""
    problems = []
    for svc_name in SERVICES:
        for (m, tmpl), op in ops_of(svc_name).items():
            # x-internal: for operators inside the cluster (debugging), never published by Kong
            if not is_admin_operation(tmpl) or op.get("x-internal"):
                continue
            covering = [(s, r) for s, r in kong_routes(cfg)
                        if s == svc_name and kong_path(tmpl) in (r.get("paths") or [])
                        and m in (r.get("methods") or [])]
            if not covering:
                problems.append(f"{svc_name}: {m} {tmpl} has no Kong route")
                continue
            for s, r in covering:
                eff = route_plugins(cfg, s, r)
                acl = eff.get("acl", {}).get("config", {})
                allow = set(acl.get("allow") or [])
                if "key-auth" not in eff:
                    problems.append(f"{svc_name}: {m} {tmpl} route {r.get('name')} lacks key-auth")
                if not allow:
                    problems.append(f"{svc_name}: {m} {tmpl} route {r.get('name')} lacks an acl allow list")
                elif not allow <= ACL_GROUPS:
                    problems.append(f"{svc_name}: {m} {tmpl} acl names unknown groups {sorted(allow - ACL_GROUPS)}")
                elif m == "GET" and "viewers" not in allow:
                    problems.append(f"{svc_name}: GET {tmpl} is a read: viewers must be allowed")
                elif m != "GET" and "viewers" in allow:
                    problems.append(f"{svc_name}: {m} {tmpl} is a write: viewers must not be allowed")
                tr = eff.get("request-transformer", {}).get("config", {})
                if not any(h.lower().startswith("x-gateway-token:") for h in (tr.get("add") or {}).get("headers", [])):
                    problems.append(f"{svc_name}: {m} {tmpl} route does not add X-Gateway-Token")
    return problems


@pytest.fixture(scope="module")
def kong():
    return load_yaml(KONG)


def test_kong_file_passes_deck_validation(tmp_path):
    deck = need("deck")
    # Newer decK: `deck file validate`; Debian's 1.4 has `deck validate` (offline too).
    has_file_validate = run([deck, "file", "validate", "--help"]).returncode == 0
    cmd = [deck, "file", "validate", KONG] if has_file_validate else [deck, "validate", "-s", KONG]
    res = run(cmd)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}:\n{res.stdout}{res.stderr}"
    # ... and it does catch a broken file (unknown key, duplicate plugin).
    broken = load_yaml(KONG)
    broken["services"][0]["bogus_field"] = 1
    broken["services"][0]["routes"][0]["plugins"].append(broken["services"][0]["routes"][0]["plugins"][0])
    bad = tmp_path / "kong.yml"
    bad.write_text(yaml.safe_dump(broken))
    cmd[-1] = bad
    assert run(cmd).returncode != 0, "deck accepted a broken kong.yml"


def test_kong_file_shape(kong):
    assert kong["_format_version"] == "3.0"
    glob = {p["name"]: p for p in kong.get("plugins") or []
            if not (p.get("route") or p.get("service") or p.get("consumer"))}
    assert set(glob) == {"correlation-id", "prometheus"}, f"global plugins: {sorted(glob)}"
    cid = glob["correlation-id"]["config"]
    assert cid["header_name"] == "X-Request-ID" and cid["echo_downstream"] is True
    # Upstreams are the services' cluster names and ports.
    for svc in kong["services"]:
        assert svc["url"] == f"http://{svc['name']}:{SERVICES[svc['name']]}", svc["name"]
    # Consumers: placeholders only, groups from the three ACL groups.
    placeholder = re.compile(r'^\$\{\{ env "DECK_[A-Z_]+" \}\}$')
    assert kong.get("consumers"), "example consumers missing"
    groups = set()
    for c in kong["consumers"]:
        for cred in c.get("keyauth_credentials") or []:
            assert placeholder.match(str(cred["key"])), f"consumer {c['username']}: a real key in git?"
        groups |= {a["group"] for a in c.get("acls") or []}
    assert groups == ACL_GROUPS
    # Operational paths are never routed.
    for _, r in kong_routes(kong):
        for p in r.get("paths") or []:
            assert not any(o in p for o in OPS_PATHS), f"route {r['name']} exposes {p}"


def test_kong_key_auth_and_acl_never_global(kong):
    for p in kong.get("plugins") or []:
        if p["name"] in ("key-auth", "acl"):
            assert p.get("route") or p.get("service"), f"global {p['name']} plugin"


def test_kong_webhook_route(kong):
    routes = [(s, r) for s, r in kong_routes(kong)
              if s == "webhook-ingest" and kong_path(WEBHOOK_TEMPLATE) in r.get("paths", [])]
    assert len(routes) == 1, "exactly one webhook route expected"
    s, r = routes[0]
    assert r["methods"] == ["POST"]
    eff = route_plugins(kong, s, r)
    assert "key-auth" not in eff and "acl" not in eff, "webhook-ingest verifies signatures itself"
    rsl = eff["request-size-limiting"]["config"]
    assert (rsl["allowed_payload_size"], rsl.get("size_unit", "megabytes")) == (1, "megabytes")
    assert rsl["require_content_length"] is True
    rl = eff["rate-limiting"]["config"]
    assert rl["limit_by"] == "ip" and rl["policy"] == "redis" and rl["redis"]["host"]
    tr = eff["request-transformer"]["config"]
    removed = {h.lower() for h in tr["remove"]["headers"]}
    assert IDENTITY_HEADERS <= removed, f"not stripped: {sorted(IDENTITY_HEADERS - removed)}"
    assert tr["add"]["headers"] == ['X-Gateway-Token:${{ env "DECK_GATEWAY_TOKEN" }}']


def test_every_kong_route_resolves_to_an_operation(kong):
    assert list(kong_routes(kong)), "kong.yml has no routes"
    assert check_routes_resolve(kong) == []


def test_route_checker_catches_unknown_routes(kong):
    broken = copy.deepcopy(kong)
    svc = next(s for s in broken["services"] if s["name"] == "robot-registry")
    svc.setdefault("routes", []).extend([
        {"name": "bogus", "methods": ["GET"], "paths": ["~/v1/nope$"], "strip_path": False},
        {"name": "ops", "methods": ["GET"], "paths": ["~/healthz$"], "strip_path": False},
        {"name": "prefix", "methods": ["GET"], "paths": ["/v1"], "strip_path": True},
    ])
    problems = check_routes_resolve(broken)
    assert any("bogus" in p for p in problems)
    assert any("ops" in p and "operational" in p for p in problems)
    assert any("prefix" in p and "strip_path" in p for p in problems)


def test_every_admin_operation_is_covered_by_an_auth_route(kong):
    assert check_admin_operations_protected(kong) == []


def test_admin_checker_catches_unprotected_operations(kong):
    # A contract with three admin operations, as robot-registry will have them.
    fake = {
        ("GET", "/v1/robots"): {}, ("POST", "/v1/robots"): {},
        ("DELETE", "/v1/sources/{id}"): {}, ("GET", "/healthz"): {},
    }
    ops_of = lambda s: fake if s == "robot-registry" else {}  # noqa: E731
    cfg = copy.deepcopy(kong)
    svc = next(s for s in cfg["services"] if s["name"] == "robot-registry")
    svc["routes"] = []
    problems = check_admin_operations_protected(cfg, ops_of)
    assert len(problems) == 3 and all("has no Kong route" in p for p in problems)
    tr = {"name": "request-transformer",
          "config": {"add": {"headers": ['X-Gateway-Token:${{ env "DECK_GATEWAY_TOKEN" }}']}}}
    svc["routes"] = [
        {"name": "list", "methods": ["GET"], "paths": [kong_path("/v1/robots")], "strip_path": False,
         "plugins": [{"name": "key-auth"}, {"name": "acl", "config": {"allow": ["viewers"]}}, tr]},
        {"name": "create", "methods": ["POST"], "paths": [kong_path("/v1/robots")], "strip_path": False,
         "plugins": [{"name": "acl", "config": {"allow": ["viewers", "operators"]}}, tr]},
        {"name": "del", "methods": ["DELETE"], "paths": [kong_path("/v1/sources/{id}")], "strip_path": False,
         "plugins": [{"name": "key-auth"}, {"name": "acl", "config": {"allow": ["admins"]}}]},
    ]
    problems = check_admin_operations_protected(cfg, ops_of)
    assert any("POST /v1/robots" in p and "key-auth" in p for p in problems)
    assert any("POST /v1/robots" in p and "viewers must not" in p for p in problems)
    assert any("DELETE /v1/sources/{id}" in p and "X-Gateway-Token" in p for p in problems)
    assert not any("GET /v1/robots" in p for p in problems)


def test_kong_render_fills_placeholders_and_refuses_missing_or_weak_keys(tmp_path):
    script = ROOT / "scripts" / "kong-render.py"
    out = tmp_path / "kong.yml"
    env = dict(os.environ, **DUMMY_ENV)
    res = run([sys.executable, script, KONG, out], env=env)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(out.read_text())
    assert "${{" not in json.dumps(cfg)
    assert {c["keyauth_credentials"][0]["key"] for c in cfg["consumers"]} == {
        DUMMY_ENV["DECK_VIEWER_KEY"], DUMMY_ENV["DECK_OPERATOR_KEY"], DUMMY_ENV["DECK_ADMIN_KEY"]}
    env.pop("DECK_ADMIN_KEY")
    res = run([sys.executable, script, KONG], env=env)
    assert res.returncode == 1 and "DECK_ADMIN_KEY is not set" in res.stderr
    env["DECK_ADMIN_KEY"] = 'short"\n'
    res = run([sys.executable, script, KONG], env=env)
    assert res.returncode == 1 and "DECK_ADMIN_KEY must be" in res.stderr


# ---- Helm -------------------------------------------------------------------------------

@pytest.mark.parametrize("values", ["default", "production"])
def test_helm_lint_strict(tools, values):
    extra = ["-f", PROD_VALUES] if values == "production" else []
    res = run([tools["helm"], "lint", "--strict", CHART, *extra])
    assert res.returncode == 0, res.stdout + res.stderr


def walk_schema(node, where="#"):
    if isinstance(node, dict):
        if node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"]):
            yield where, node
        for k, v in node.items():
            yield from walk_schema(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_schema(v, f"{where}/{i}")


def test_values_schema_closed_at_every_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = list(walk_schema(schema))
    assert len(objects) > 20
    open_ = [w for w, o in objects if o.get("additionalProperties") is not False]
    assert open_ == [], f"objects without additionalProperties: false: {open_}"
    import jsonschema
    for f in (CHART / "values.yaml", PROD_VALUES):
        jsonschema.validate(load_yaml(f), schema)


@pytest.mark.parametrize("override", [
    "bogus=1", "services.webhook-ingest.hpa.bogus=1", "securityContext.privileged=true",
    "logLevel=verbose", "services.nope.enabled=true",
])
def test_helm_refuses_values_the_schema_does_not_allow(tools, override):
    res = run([tools["helm"], "template", "x", CHART, "--kube-version", KUBE_VERSION, "--set", override])
    assert res.returncode != 0, f"--set {override} was accepted"


def test_helm_objects(rendered):
    for label, r in rendered.items():
        objs = r["objs"]
        kinds = {k for k, _ in objs}
        assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy",
                "HorizontalPodAutoscaler"} <= kinds, label
        for name, port in SERVICES.items():
            dep = objs[("Deployment", name)]
            pod = dep["spec"]["template"]["spec"]
            c = pod["containers"][0]
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["ports"][0]["containerPort"] == port
            assert c["resources"]["requests"] and c["resources"]["limits"]
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert pod["affinity"]["podAntiAffinity"]
            env = {e["name"]: e for e in c.get("env", [])}
            if name in ("webhook-ingest", "robot-registry", "config-center"):
                assert env["SECRETS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "SECRETS_KEY"
            assert all("value" not in e for k, e in env.items() if k in ("SECRETS_KEY", "GATEWAY_TOKEN")), \
                "secrets must come from Secret references"
            assert ("PodDisruptionBudget", name) in objs
            np_ = objs[("NetworkPolicy", name)]["spec"]
            assert set(np_["policyTypes"]) == {"Ingress", "Egress"}
            sources = [f["podSelector"]["matchLabels"] for rule in np_["ingress"] for f in rule["from"]]
            kong_ok = any(s.get("app.kubernetes.io/name") == "kong" for s in sources)
            prom_ok = any(s.get("app.kubernetes.io/name") == "prometheus" for s in sources)
            assert prom_ok and kong_ok == (name != "stream-processor"), (label, name, sources)
            cfg_text = objs[("ConfigMap", f"{name}-config")]["data"][f"{name}.yaml"]
            assert yaml.safe_load(cfg_text)["http"]["port"] == port
            hpa = ("HorizontalPodAutoscaler", name) in objs
            assert hpa == (name in ("webhook-ingest", "robot-registry")), (label, name)
            assert ("replicas" in dep["spec"]) != hpa, "an HPA-managed Deployment must not set replicas"
        assert ("ConfigMap", "robot-fleet-dashboards") in objs
    prod = rendered["production"]["objs"]
    assert ("ServiceMonitor", "robot-fleet") in prod and ("PrometheusRule", "robot-fleet") in prod
    assert sum(1 for k, _ in prod if k == "KafkaTopic") == 8
    default = rendered["default"]["objs"]
    assert not any(k in ("ServiceMonitor", "PrometheusRule", "KafkaTopic") for k, _ in default), \
        "CRD objects must only render when their CRDs exist / are enabled"


def test_chart_config_maps_are_accepted_by_the_services(rendered, tmp_path):
    """The chart's config files load in the real binaries (a bad file exits 2 at once)."""
    missing = [n for n in SERVICES if not (BIN / n).exists()]
    if missing:
        pytest.fail(f"service binaries missing in {BIN}: {missing} (run make)")
    objs = rendered["default"]["objs"]
    procs = []
    try:
        for name in SERVICES:
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(objs[("ConfigMap", f"{name}-config")]["data"][f"{name}.yaml"])
            port = free_port()
            env = dict(os.environ, HTTP_PORT=str(port), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
                       REDIS_URL="redis://127.0.0.1:1/0", KAFKA_CREATE_TOPICS="false",
                       SECRETS_KEY=DUMMY_ENV["SECRETS_KEY"])
            log = open(tmp_path / f"{name}.log", "wb")
            p = subprocess.Popen([str(BIN / name), "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
            procs.append((name, p, port, log))
        for name, p, port, _ in procs:
            deadline = time.monotonic() + 30
            while True:
                assert p.poll() is None, \
                    f"{name} exited {p.returncode}: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
                try:
                    if http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"{name} never answered /healthz"
                time.sleep(0.1)
    finally:
        for _, p, _, log in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p, _, log in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()


# kube-score checks that cannot apply to this chart, each with the reason (none today;
# add `"check-id": "reason"` rather than weakening the chart).
KUBE_SCORE_IGNORES = {}


@pytest.mark.parametrize("values", ["default", "production"])
def test_kube_score_has_no_critical_findings(tools, rendered, values, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(rendered[values]["text"])
    args = [tools["kube-score"], "score", "--output-format", "ci"]
    for t in KUBE_SCORE_IGNORES:
        args += ["--ignore-test", t]
    res = run([*args, manifest])
    critical = [line for line in res.stdout.splitlines() if line.startswith("[CRITICAL]")]
    assert res.stdout.strip(), f"kube-score printed nothing: {res.stderr}"
    assert critical == [], "\n".join(critical)


def test_kube_score_catches_a_bad_manifest(tools, rendered, tmp_path):
    bad = rendered["default"]["text"].replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(bad)
    res = run([tools["kube-score"], "score", "--output-format", "ci", manifest])
    assert any(line.startswith("[CRITICAL]") for line in res.stdout.splitlines())


# ---- k8s/ ---------------------------------------------------------------------------------

def test_k8s_manifests_agree_with_the_chart(tools, tmp_path):
    out = tmp_path / "k8s"
    res = run([ROOT / "scripts" / "gen-k8s.sh", out])
    assert res.returncode == 0, res.stderr
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert generated, "gen-k8s.sh produced nothing"
    stale = [str(rel) for rel in generated
             if not (ROOT / "k8s" / rel).exists() or (ROOT / "k8s" / rel).read_text() != (out / rel).read_text()]
    assert stale == [], f"k8s/ differs from the chart, run scripts/gen-k8s.sh: {stale}"


def test_fluent_bit_config_parses_ecs_json_and_keeps_timestamp():
    objs = docs((ROOT / "k8s" / "logging" / "fluent-bit.yaml").read_text())
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    conf, parsers = cm["data"]["fluent-bit.conf"], cm["data"]["parsers.conf"]
    assert re.search(r"Name\s+es\b", conf) and re.search(r"Time_Key\s+@timestamp", conf)
    assert re.search(r"Parser\s+ecs_json", conf)
    assert re.search(r"Format\s+json", parsers) and re.search(r"Time_Key\s+@timestamp", parsers)
    # The parser's time format matches what libcommon's logger writes.
    fmt = re.search(r"Time_Format\s+(\S+)", parsers).group(1)
    assert fmt == "%Y-%m-%dT%H:%M:%S.%LZ"
    kinds = {o["kind"] for o in objs}
    assert {"DaemonSet", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds


# ---- docker-compose, Dockerfile, observability ------------------------------------------------

def compose_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECK_")}
    env.update(DUMMY_ENV)
    return env


def test_docker_compose_config_is_valid(tmp_path):
    dc = need("docker-compose")
    res = run([dc, "-f", COMPOSE, "config", "-q"], env=compose_env(), cwd=ROOT)
    assert res.returncode == 0, res.stderr
    res = run([dc, "-f", COMPOSE, "config", "-q"], env={k: v for k, v in compose_env().items()
                                                         if k != "SECRETS_KEY"}, cwd=ROOT)
    assert res.returncode != 0, "compose must refuse to start without SECRETS_KEY"
    bad = load_yaml(COMPOSE)
    bad["services"]["redis"]["bogus"] = 1
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(bad))
    res = run([dc, "-f", tmp_path / "docker-compose.yml", "config", "-q"], env=compose_env(), cwd=tmp_path)
    assert res.returncode != 0, "docker-compose accepted an unknown key"


def test_docker_compose_stack():
    c = load_yaml(COMPOSE)
    svcs = c["services"]
    assert set(SERVICES) | {"kong", "kafka", "redis", "prometheus", "grafana"} <= set(svcs)
    assert svcs["kong"]["environment"]["KONG_DATABASE"] == "off"
    assert "--appendonly" in svcs["redis"]["command"]
    assert "KAFKA_PROCESS_ROLES" in svcs["kafka"]["environment"], "Kafka must run in KRaft mode"
    assert not any("ZOOKEEPER" in k for k in svcs["kafka"]["environment"])
    for name in SERVICES:
        s = svcs[name]
        assert s["build"]["target"] == name
        assert s["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert s.get("read_only") is True and "ports" not in s, f"{name} is reachable only via Kong"
    # Every host file or directory the stack mounts or builds from exists.
    for name, s in svcs.items():
        for v in s.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
        if "build" in s:
            ctx = ROOT / s["build"].get("context", ".")
            assert (ctx / s["build"].get("dockerfile", "Dockerfile")).exists()


def dockerfile_stages():
    stages, cur = {}, None
    for raw in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            cur = m.group(2) or f"stage{len(stages)}"
            stages[cur] = {"from": m.group(1), "lines": []}
        elif cur:
            stages[cur]["lines"].append((instr, rest.strip()))
    return stages


def test_dockerfile():
    stages = dockerfile_stages()
    assert "build" in stages and stages["build"]["from"].startswith("debian:")
    assert stages["runtime"]["from"] == "debian:${DEBIAN_VERSION}-slim"
    assert re.search(r"^ARG DEBIAN_VERSION=bookworm$", (ROOT / "Dockerfile").read_text(), re.M)
    runtime_install = " ".join(r for i, r in stages["runtime"]["lines"] if i == "RUN")
    for lib in ("librdkafka1", "libmicrohttpd12", "libhiredis0.14", "libcjson1", "libcurl4",
                "libyaml-0-2", "libssl3", "ca-certificates"):
        assert lib in runtime_install
    assert "-dev" not in runtime_install and "build-essential" not in runtime_install
    user = [r for i, r in stages["runtime"]["lines"] if i == "USER"]
    assert user and not user[-1].split(":")[0] in ("0", "root"), "runtime must run as non-root"
    for name, port in SERVICES.items():
        lines = stages[name]["lines"]
        assert stages[name]["from"] == "runtime"
        hc = [r for i, r in lines if i == "HEALTHCHECK"]
        assert hc and re.search(r'CMD \[.*"http://127\.0\.0\.1:%d/healthz"\]' % port, hc[0]), name
        ep = [r for i, r in lines if i == "ENTRYPOINT"]
        assert json.loads(ep[0]) == [f"/usr/local/bin/{name}"], "exec form: no shell at run time"
        assert all(i != "USER" or r not in ("root", "0") for i, r in lines)
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!libcommon/" in ignore and "!services/" in ignore


def test_prometheus_files_pass_promtool(tmp_path):
    promtool = need("promtool")
    res = run([promtool, "check", "rules", CHART / "files" / "alerts.yaml"])
    assert res.returncode == 0, res.stdout + res.stderr
    res = run([promtool, "check", "config", "--syntax-only", ROOT / "k8s" / "observability" / "prometheus.yml"])
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = {j["job_name"] for j in load_yaml(ROOT / "k8s" / "observability" / "prometheus.yml")["scrape_configs"]}
    assert set(SERVICES) | {"kong"} <= jobs


def test_grafana_dashboard():
    dashboards = list((CHART / "dashboards").glob("*.json"))
    assert dashboards
    for d in dashboards:
        dash = json.loads(d.read_text())
        exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
        for metric in ("http_requests_total", "http_request_duration_seconds_bucket", "up",
                       "kong_http_requests_total"):
            assert metric in exprs, f"{d.name}: no panel uses {metric}"
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))


def test_kong_admin_routes_are_generated_from_proto():
    """kong/kong.yml's admin routes are what scripts/gen-kong-routes.py makes of proto/openapi."""
    res = run([sys.executable, str(ROOT / "scripts" / "gen-kong-routes.py"), "--check"])
    assert res.returncode == 0, res.stdout + res.stderr

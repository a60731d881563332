#!/usr/bin/env python3
"""Writes the Kong routes of the admin services into kong/kong.yml from the
OpenAPI files in proto/openapi/, so every documented operation is routed and
protected, and nothing else is.

Operations marked `x-internal: true` (debugging endpoints for operators inside
the cluster) are never published. One route per operation: the anchored path regex, the method, key-auth, an acl
allow list and the gateway token. The allow list comes from the operation's
`x-kong-acl` when present, else: reads (GET) -> viewers, operators, admins;
writes under /v1/sources -> admins (vendor sources and their secrets); other
writes -> operators, admins.

  scripts/gen-kong-routes.py           rewrite kong/kong.yml in place
  scripts/gen-kong-routes.py --check   exit 1 if kong/kong.yml is out of date
"""
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KONG = ROOT / "kong" / "kong.yml"
ADMIN_SERVICES = ["robot-registry", "reboot-command", "config-center"]
OPS_PATHS = {"/healthz", "/readyz", "/metrics"}
METHODS = ["get", "put", "post", "patch", "delete"]


def operations(service):
    spec = yaml.safe_load((ROOT / "proto" / "openapi" / f"{service}.yaml").read_text())
    for tmpl, item in (spec.get("paths") or {}).items():
        if tmpl in OPS_PATHS or "$ref" in item:
            continue
        for m in METHODS:
            if m in item and not item[m].get("x-internal"):
                yield m.upper(), tmpl, item[m]


def acl(method, tmpl, op):
    if op.get("x-kong-acl"):
        return list(op["x-kong-acl"])
    if method == "GET":
        return ["viewers", "operators", "admins"]
    if tmpl.startswith("/v1/sources"):
        return ["admins"]
    return ["operators", "admins"]


def routes_block(service):
    lines = []
    ops = list(operations(service))
    if not ops:
        return "    routes: []\n"
    lines.append("    routes:")
    for method, tmpl, op in ops:
        name = op.get("operationId") or f"{method.lower()}{tmpl}"
        path = "~" + re.sub(r"\{[^/{}]+\}", "[^/]+", tmpl) + "$"
        groups = ", ".join(acl(method, tmpl, op))
        lines += [
            f"      - name: {service}.{name}",
            f"        methods: [{method}]",
            f"        paths: [\"{path}\"]",
            "        protocols: [http, https]",
            "        strip_path: false",
            "        tags: [robot-fleet, admin]",
            "        plugins:",
            "          - {name: key-auth, config: {key_names: [apikey], hide_credentials: true}}",
            f"          - {{name: acl, config: {{allow: [{groups}], hide_groups_header: true}}}}",
            "          - name: request-transformer",
            "            config:",
            "              remove: {headers: [X-Gateway-Token]}",
            "              add: {headers: ['X-Gateway-Token:${{ env \"DECK_GATEWAY_TOKEN\" }}']}",
        ]
    return "\n".join(lines) + "\n"


def render(text):
    for service in ADMIN_SERVICES:
        begin = f"    # BEGIN generated routes for {service} (scripts/gen-kong-routes.py)\n"
        end = f"    # END generated routes for {service}\n"
        block = begin + routes_block(service) + end
        if begin in text:
            a = text.index(begin)
            b = text.index(end, a) + len(end)
            text = text[:a] + block + text[b:]
        else:
            # first run: append the markers at the end of the service's block
            m = re.search(rf"^  - name: {re.escape(service)}\n(?:    .*\n|\n)*?(?=^  - name: |^\S)", text, re.M)
            if not m:
                sys.exit(f"kong.yml: no service block for {service}")
            body = m.group(0).rstrip("\n") + "\n"
            text = text[:m.start()] + body + block + "\n" + text[m.end():]
    return text


def main():
    old = KONG.read_text()
    new = render(old)
    if "--check" in sys.argv[1:]:
        if new != old:
            sys.exit("kong/kong.yml is out of date: run scripts/gen-kong-routes.py")
        return
    KONG.write_text(new)


if __name__ == "__main__":
    main()

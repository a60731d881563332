#!/usr/bin/env python3
"""Renders kong/kong.yml for Kong's DB-less mode: replaces every
`${{ env "DECK_NAME" }}` placeholder (decK's syntax) with the value of the
environment variable DECK_NAME. Kong itself does not expand them, so this runs
at deploy time (docker-compose's kong-config service, or a CD job creating the
Kong ConfigMap/Secret).

    scripts/kong-render.py [IN [OUT]]      (defaults: kong/kong.yml, stdout)

Fails (exit 1, naming the variables) when a placeholder's variable is unset,
shorter than 16 characters, or has characters outside [A-Za-z0-9._~+/=-], so a
missing or weak key never reaches the gateway and a value cannot inject YAML.
Standard library only."""

import os
import re
import sys

PLACEHOLDER = re.compile(r'\$\{\{\s*env\s+"(DECK_[A-Z0-9_]+)"\s*\}\}')
SAFE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,}$")


def render(text, env):
    problems = []

    def sub(m):
        name = m.group(1)
        value = env.get(name)
        if value is None or value == "":
            problems.append(f"{name} is not set")
            return m.group(0)
        if not SAFE.match(value):
            problems.append(f"{name} must be >= 16 characters of [A-Za-z0-9._~+/=-]")
            return m.group(0)
        return value

    out = PLACEHOLDER.sub(sub, text)
    return out, sorted(set(problems))


def main(argv):
    src = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "kong", "kong.yml")
    with open(src, encoding="utf-8") as f:
        text = f.read()
    out, problems = render(text, os.environ)
    if problems:
        for p in problems:
            print(f"kong-render: {p}", file=sys.stderr)
        return 1
    if len(argv) > 2:
        tmp = argv[2] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, argv[2])
    else:
        sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

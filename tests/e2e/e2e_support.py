"""Helpers of the end-to-end tests. The integration conftest (tests/integration/
conftest.py: fixtures infra and service, http, wait_for, free_port, BIN) is
reused, not copied: when pytest has already imported it as module "conftest"
that module is taken, else it is loaded by file path under its own name, so
tests/integration and tests/e2e collect together."""

import importlib.util
import json
import pathlib
import sys
import time
import uuid

import yaml
from confluent_kafka import Consumer

_IC_PATH = pathlib.Path(__file__).resolve().parents[1] / "integration" / "conftest.py"


def _integration_conftest():
    mod = sys.modules.get("conftest")
    if mod is not None and pathlib.Path(getattr(mod, "__file__", "")).resolve() == _IC_PATH:
        return mod
    mod = sys.modules.get("integration_conftest")
    if mod is None:
        spec = importlib.util.spec_from_file_location("integration_conftest", _IC_PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["integration_conftest"] = mod
        spec.loader.exec_module(mod)
    return mod


ic = _integration_conftest()
ROOT, BIN, http, wait_for, free_port = ic.ROOT, ic.BIN, ic.http, ic.wait_for, ic.free_port
JSONH = {"Content-Type": "application/json"}
STATUS_TOPIC = "robot.command-status.v1"


def write_config(tmp_path, name, overrides):
    """services/<name>/<name>.yaml with dotted-key overrides, written to tmp_path."""
    doc = yaml.safe_load((ROOT / "services" / name / f"{name}.yaml").read_text())
    for key, value in overrides.items():
        sect, k = key.split(".", 1)
        doc.setdefault(sect, {})[k] = value
    path = tmp_path / f"{name}-e2e.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def jcall(svc, method, path, doc=None, headers=None):
    h = dict(JSONH)
    h.update(headers or {})
    s, _, b = svc.request(method, path, body=None if doc is None else json.dumps(doc).encode(),
                          headers=h)
    return s, (json.loads(b) if b else None)


class StatusReader:
    """robot.command-status.v1 from the beginning (read_committed), kept per robot."""

    def __init__(self, bootstrap):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-" + uuid.uuid4().hex,
                           "enable.auto.commit": False, "auto.offset.reset": "earliest",
                           "isolation.level": "read_committed"})
        self.c.subscribe([STATUS_TOPIC])
        self.by_robot = {}

    def drain(self, seconds=0.5):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self.c.poll(0.1)
            if m is None or m.error():
                continue
            data = json.loads(m.value())["data"]
            self.by_robot.setdefault(data["robot_id"], []).append(data)

    def commands(self, robot_id):
        """command_id -> its states in topic order."""
        out = {}
        for d in self.by_robot.get(robot_id, []):
            out.setdefault(d["command_id"], []).append(d)
        return out

    def close(self):
        self.c.close()

"""Helpers for the reboot-command tests, written independently of the C code:
a fake vendor platform (POST /v1/robots/{id}/commands, scripted answers),
robots and sources written into Redis in the registry's documented layout
(proto/redis-keys.md), vendor events produced to robot.events.v1 the way
webhook-ingest produces them, and a reader for robot.command-status.v1."""

import base64
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import ROOT, http, wait_for

COMMANDS = "robot.commands.v1"
EVENTS = "robot.events.v1"
STATUS = "robot.command-status.v1"


class Vendor:
    """Answers POST /v1/robots/{id}/commands. script: list of (status, headers, body)
    consumed one per call, then `default`. slow_s delays every answer."""

    def __init__(self, token="vendor-token"):
        self.token = token
        self.calls = []
        self.script = []
        self.default = (202, {}, {"accepted": True})
        self.slow_s = 0.0
        self.lock = threading.Lock()
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with vendor.lock:
                    vendor.calls.append({"path": self.path,
                                         "key": self.headers.get("Idempotency-Key"),
                                         "auth": self.headers.get("Authorization"),
                                         "body": json.loads(body or b"null"),
                                         "at": time.monotonic()})
                    status, headers, doc = vendor.script.pop(0) if vendor.script else vendor.default
                if vendor.slow_s:
                    time.sleep(vendor.slow_s)
                out = json.dumps(doc).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def calls_for(self, command_id):
        with self.lock:
            return [c for c in self.calls if c["key"] == command_id]


def seal(aad, plain):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    key = base64.b64decode(os.environ["SECRETS_KEY"])
    nonce = os.urandom(12)
    return "v1:k1:" + base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, aad.encode())).decode()


def add_source(r, source_id, base_url, token):
    r.hset(f"source:{source_id}", mapping={
        "id": source_id, "base_url": base_url, "signature_scheme": "standard-webhooks",
        "api_token": seal(f"source:{source_id}:api_token", token.encode()),
        "webhook_secrets": seal(f"source:{source_id}:webhook_secrets", b"[]"),
        "version": 1})
    r.sadd("sources", source_id)


def add_robot(r, robot_id, source, busy=False, auto=True, modes=("soft", "hard"), window=None):
    rec = {"id": robot_id, "name": robot_id, "model": "AX-200", "fleet": "fleet-a",
           "source": source, "status": "online", "labels": {},
           "policy": {"auto_reboot": auto, "modes": list(modes)},
           "maintenance_window": window, "busy": busy, "version": 1,
           "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z",
           "updated_by": "test"}
    r.hset(f"robot:{robot_id}", mapping={"record": json.dumps(rec), "version": 1})


def write_config(tmp_path, **overrides):
    """The example config with dotted-key overrides ("reboot.cooldown_s": 0)."""
    doc = yaml.safe_load((ROOT / "services/reboot-command/reboot-command.yaml").read_text())
    for k, v in overrides.items():
        sect, key = k.split(".", 1)
        doc.setdefault(sect, {})[key] = v
    path = tmp_path / f"reboot-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def now_iso(offset_s=0.0):
    t = time.time() + offset_s
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class Kafka:
    def __init__(self, bootstrap):
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def _send(self, topic, key, ce):
        self.p.produce(topic, key=key.encode(), value=json.dumps(ce).encode())
        assert self.p.flush(15) == 0

    def vendor_event(self, etype, robot_id, **inner):
        ce = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "/webhook-ingest/test",
              "type": etype, "subject": robot_id, "time": now_iso(),
              "datacontenttype": "application/json",
              "data": {"type": etype, "robot_id": robot_id, "occurred_at": now_iso(),
                       "data": inner, "source": "test", "received_at": now_iso()}}
        self._send(EVENTS, robot_id, ce)

    def automatic(self, robot_id, mode="hard", reason="offline", command_id=None):
        cid = command_id or f"sp-{robot_id}-{reason}-{int(time.time() * 1000)}"
        ce = {"specversion": "1.0", "id": cid, "source": "/stream-processor",
              "type": "robot.reboot.requested", "subject": robot_id, "time": now_iso(),
              "datacontenttype": "application/json",
              "data": {"command_id": cid, "robot_id": robot_id, "mode": mode, "reason": reason,
                       "origin": "automatic", "requested_at": now_iso(), "trigger_at": None,
                       "force": False}}
        self._send(COMMANDS, robot_id, ce)
        return cid


class StatusTail:
    """Reads robot.command-status.v1 from the offsets it had when created."""

    def __init__(self, bootstrap, partitions=12):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-" + uuid.uuid4().hex,
                           "enable.auto.commit": False})
        parts = []
        for p in range(partitions):
            high = wait_for(lambda: self.c.get_watermark_offsets(TopicPartition(STATUS, p),
                                                                 timeout=5), 20, "status topic")
            parts.append(TopicPartition(STATUS, p, high[1]))
        self.c.assign(parts)
        self.messages = []

    def until(self, pred, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.messages):
                return self.messages
            m = self.c.poll(0.2)
            if m is not None and not m.error():
                self.messages.append(m)
        raise AssertionError(f"status condition not met; saw {self.states()}")

    def states(self, command_id=None):
        out = []
        for m in self.messages:
            d = json.loads(m.value())["data"]
            if command_id is None or d["command_id"] == command_id:
                out.append(d["state"])
        return out

    def close(self):
        self.c.close()


class Api:
    def __init__(self, svc, user="alice"):
        self.svc = svc
        self.user = user

    def reboot(self, robot_id, body=None, key=None, user=None, raw=None):
        h = {"Content-Type": "application/json", "X-Consumer-Username": user or self.user}
        if key:
            h["Idempotency-Key"] = key
        data = raw if raw is not None else json.dumps(body or {"mode": "soft", "reason": "test"}).encode()
        status, _, b = http("POST", self.svc.url(f"/v1/robots/{robot_id}/reboot"), body=data,
                            headers=h, timeout=20)
        return status, json.loads(b or b"null")

    def get(self, path):
        status, _, b = http("GET", self.svc.url(path), timeout=10)
        return status, json.loads(b or b"null")

    def post(self, path):
        status, _, b = http("POST", self.svc.url(path), body=b"",
                            headers={"X-Consumer-Username": self.user}, timeout=10)
        return status, json.loads(b or b"null")

    def command(self, cid):
        status, doc = self.get(f"/v1/commands/{cid}")
        assert status == 200, doc
        return doc

    def wait_state(self, cid, state, timeout=20):
        def ok():
            status, doc = self.get(f"/v1/commands/{cid}")
            assert status in (200, 404), doc  # 404 until the lane has seen it
            return doc if status == 200 and doc["state"] == state else None
        return wait_for(ok, timeout, f"command {cid} to be {state}")


def metric(svc, name, labels=""):
    _, _, body = svc.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + ("{" + labels if labels else "")):
            if labels or line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def reset_shared_keys(r):
    for k in r.scan_iter("reboot:*", count=1000):
        r.delete(k)


def unique(prefix="rb"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

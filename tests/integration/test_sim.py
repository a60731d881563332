"""robot-sim (tests/sim/), the simulated vendor platform: its vendor API against
proto/openapi/vendor-platform.yaml (bearer auth, paging, Idempotency-Key replay
and 409, 404, webhook registration and deletion, injected 500s), its stats, and
a run through a real robot-registry (source, webhook registration, sync) and a
real webhook-ingest with real Redis and Apache Kafka: signed heartbeats land on
robot.events.v1, a reboot command silences the robot, then command.ack,
robot.booted and command.result arrive and heartbeats resume."""

import json
import re
import signal
import subprocess
import time
import uuid
from datetime import datetime

import jsonschema
import pytest
import yaml

from conftest import BIN, ROOT, free_port, http, wait_for
from ingest_helpers import EventTail

VENDOR = yaml.safe_load((ROOT / "proto" / "openapi" / "vendor-platform.yaml").read_text())
ROBOT_SCHEMA = VENDOR["components"]["schemas"]["Robot"]
SECRET_RE = re.compile(VENDOR["components"]["schemas"]["WebhookCreated"]["properties"]["secret"]["pattern"])
JSONH = {"Content-Type": "application/json"}


class Sim:
    def __init__(self, tmp_path, *args):
        self.port = free_port()
        self.token = "tok-" + uuid.uuid4().hex
        self.prefix = "s" + uuid.uuid4().hex[:6] + "-"
        self.log_path = tmp_path / f"robot-sim-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "robot-sim"), "--port", str(self.port), "--token", self.token,
             "--id-prefix", self.prefix, *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: self.proc.poll() is None and http("GET", self.url + "/healthz", timeout=2)[0] == 200,
                 20, "robot-sim /healthz")

    def rid(self, n):
        return f"{self.prefix}{n:05d}"

    def req(self, method, path, doc=None, headers=None, token=True):
        h = dict(JSONH)
        if token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        body = None if doc is None else (doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        s, rh, rb = http(method, self.url + path, body=body, headers=h)
        return s, rh, (json.loads(rb) if rb else None)

    def stats(self):
        return self.req("GET", "/sim/stats", token=False)[2]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        self.log.close()
        return rc

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def sims(tmp_path):
    started = []

    def make(*args):
        s = Sim(tmp_path, *args)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def command(cid, mode="soft"):
    return {"command_id": cid, "type": "reboot", "mode": mode, "reason": "test"}


def test_vendor_api_contract(sims):
    sim = sims("--robots", "23", "--fleets", "3", "--heartbeat-ms", "60000")
    # bearer auth on every /v1 route
    assert sim.req("GET", "/v1/robots", token=False)[0] == 401
    s, rh, p = sim.req("GET", "/v1/robots", headers={"Authorization": "Bearer nope"})
    assert s == 401 and p["field"] == "Authorization" and rh.get("WWW-Authenticate") == "Bearer"
    assert sim.req("POST", "/v1/webhooks", {"url": "http://x/", "event_types": ["robot.fault"]},
                   token=False)[0] == 401

    # paging: every robot exactly once, fleets round-robin, the last page ends it
    seen, token, pages = [], None, 0
    while True:
        q = "?limit=5" + (f"&page_token={token}" if token else "")
        s, _, page = sim.req("GET", "/v1/robots" + q)
        assert s == 200, page
        assert len(page["robots"]) <= 5
        for r in page["robots"]:
            jsonschema.validate(r, ROBOT_SCHEMA)
        seen += page["robots"]
        pages += 1
        token = page.get("next_page_token")
        if not token:
            break
    assert pages == 5 and [r["id"] for r in seen] == [sim.rid(i) for i in range(1, 24)]
    assert {r["fleet"] for r in seen} == {"fleet-a", "fleet-b", "fleet-c"}
    assert seen[3]["fleet"] == "fleet-a"
    assert len(sim.req("GET", "/v1/robots")[2]["robots"]) == 23  # default limit 100
    for q, field in (("?limit=0", "limit"), ("?limit=1001", "limit"), ("?limit=x", "limit"),
                     ("?page_token=zzz", "page_token")):
        s, _, p = sim.req("GET", "/v1/robots" + q)
        assert s == 400 and p["field"] == field, (q, p)

    # commands: Idempotency-Key replay, 409, 404, validation
    path = f"/v1/robots/{sim.rid(4)}/commands"
    s, _, doc = sim.req("POST", path, command("cmd-1"), {"Idempotency-Key": "cmd-1"})
    assert s == 202 and doc == {"command_id": "cmd-1", "status": "accepted"}
    s, _, doc = sim.req("POST", path, command("cmd-1"), {"Idempotency-Key": "cmd-1"})
    assert s == 202 and doc == {"command_id": "cmd-1", "status": "accepted"}
    s, _, p = sim.req("POST", path, command("cmd-1", "hard"), {"Idempotency-Key": "cmd-1"})
    assert s == 409 and p["field"] == "Idempotency-Key"
    s, _, p = sim.req("POST", f"/v1/robots/{sim.rid(24)}/commands", command("cmd-2"),
                      {"Idempotency-Key": "cmd-2"})
    assert s == 404 and p["field"] == "id"
    assert sim.req("POST", "/v1/robots/other-00001/commands", command("cmd-3"),
                   {"Idempotency-Key": "cmd-3"})[0] == 404
    assert sim.req("POST", path, command("cmd-4"))[2]["field"] == "Idempotency-Key"
    for bad, field in (({"type": "reboot", "mode": "soft"}, "command_id"),
                       ({"command_id": "c", "type": "halt", "mode": "soft"}, "type"),
                       ({"command_id": "c", "type": "reboot", "mode": "gentle"}, "mode"),
                       (b"{not json", "body")):
        s, _, p = sim.req("POST", path, bad, {"Idempotency-Key": "k-" + field})
        assert s == 400 and p["field"] == field, (bad, p)
    s, _, doc = sim.req("POST", f"/v1/robots/{sim.rid(5)}/commands", command("cmd-5", "hard"),
                        {"Idempotency-Key": "cmd-5"})
    assert s == 202

    # webhooks
    s, _, p = sim.req("POST", "/v1/webhooks", {"url": "ftp://x", "event_types": ["robot.fault"]})
    assert s == 400 and p["field"] == "url"
    s, _, p = sim.req("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/x", "event_types": ["robot.nap"]})
    assert s == 400 and p["field"] == "event_types"
    s, _, p = sim.req("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/x", "event_types": []})
    assert s == 400 and p["field"] == "event_types"
    s, _, hook = sim.req("POST", "/v1/webhooks",
                         {"url": "http://127.0.0.1:9/x", "event_types": ["robot.fault", "command.ack"]})
    assert s == 201 and hook["id"] and SECRET_RE.match(hook["secret"]), hook
    assert sim.stats()["webhooks"]["registered"] == 1
    assert sim.req("DELETE", f"/v1/webhooks/{hook['id']}")[0] == 204
    assert sim.req("DELETE", f"/v1/webhooks/{hook['id']}")[2]["field"] == "id"
    assert sim.stats()["webhooks"]["registered"] == 0

    # injected vendor failures, switched at run time
    s, _, p = sim.req("POST", "/sim/misbehave", {"vendor_500": 2}, token=False)
    assert s == 400 and p["field"] == "vendor_500"
    s, _, p = sim.req("POST", "/sim/misbehave", {"teleport": 1}, token=False)
    assert s == 400 and p["field"] == "teleport"
    assert sim.req("POST", "/sim/misbehave", {"vendor_500": 1, "slow_ms": 300}, token=False)[0] == 200
    t0 = time.monotonic()
    s, rh, _ = sim.req("GET", "/v1/robots")
    assert s == 500 and rh.get("Retry-After") == "1" and time.monotonic() - t0 >= 0.3
    m = sim.req("POST", "/sim/misbehave", {"vendor_500": 0, "slow_ms": 0}, token=False)[2]
    assert m["vendor_500"] == 0 and m["slow_ms"] == 0
    assert sim.req("GET", "/v1/robots")[0] == 200

    st = sim.stats()
    c = st["commands"]
    assert c["accepted"] == 2 and c["duplicates_suppressed"] == 1 and c["idempotency_conflicts"] == 1
    assert c["unknown_robot"] == 2 and c["by_mode"] == {"soft": 1, "hard": 1}
    assert c["by_robot"] == {sim.rid(4): {"soft": 1, "hard": 0}, sim.rid(5): {"soft": 0, "hard": 1}}
    assert st["rebooting_count"] == 2 and sorted(st["silent_robots"]) == [sim.rid(4), sim.rid(5)]
    assert st["vendor_api"]["unauthorized"] == 3 and st["vendor_api"]["injected_500"] == 1
    assert sim.stop() == 0
    assert "summary: robots 23" in sim.output()


def test_scenarios_and_bad_options(sims, tmp_path):
    bad = subprocess.run([str(BIN / "robot-sim"), "--token", "t", "--robots", "5", "--silent", "9@1"],
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "robot 9" in bad.stderr
    bad = subprocess.run([str(BIN / "robot-sim"), "--robots", "5"], capture_output=True, text=True,
                         timeout=10)
    assert bad.returncode == 2 and "--token" in bad.stderr
    scen = tmp_path / "scenario.txt"
    scen.write_text("# demo\nsilent 2@0.3+1.5\nstorm a@0.2:7/0.5\n")
    sim = sims("--robots", "4", "--heartbeat-ms", "200", "--scenario", str(scen))
    wait_for(lambda: sim.stats()["silent_robots"] == [sim.rid(2)], 5, "robot 2 silent")
    wait_for(lambda: sim.stats()["events"]["robot.fault"] >= 7, 5, "fault storm")
    wait_for(lambda: sim.stats()["silent_count"] == 0, 5, "robot 2 talking again")
    # nobody registered a webhook: events are counted, not sent (the counters are read one
    # by one while robots keep talking, so compare a snapshot taken between two ticks)
    def unrouted_snapshot():
        snap = sim.stats()
        return snap if snap["events_unrouted"] == sum(snap["events"].values()) else None
    st = wait_for(unrouted_snapshot, 5, "events counted as unrouted")
    assert st["webhooks"]["sent"] == 0
    assert sim.stop() == 0


def registry_config(tmp_path, ingest_port):
    doc = yaml.safe_load((ROOT / "services" / "robot-registry" / "robot-registry.yaml").read_text())
    doc["registry"]["public_ingest_url"] = f"http://127.0.0.1:{ingest_port}/v1/webhooks/{{source}}"
    path = tmp_path / "registry-sim.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def jreq(svc, method, path, doc=None):
    s, _, b = svc.request(method, path, body=None if doc is None else json.dumps(doc).encode(),
                          headers=JSONH)
    return s, (json.loads(b) if b else None)


def test_heartbeats_and_reboot_through_registry_and_ingest(sims, service, infra, tmp_path):
    ingest = service("webhook-ingest").wait_ready()
    registry = service("robot-registry", config=registry_config(tmp_path, ingest.port)).wait_ready()
    sim = sims("--robots", "6", "--heartbeat-ms", "400", "--reboot-ms", "2500", "--max-batch", "4",
               "--status-prob", "0", "--fault-prob", "0")
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    src = "sim-" + uuid.uuid4().hex[:8]
    s, doc = jreq(registry, "PUT", f"/v1/sources/{src}", {"base_url": sim.url, "api_token": sim.token})
    assert s == 201, doc
    s, doc = jreq(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 201, doc
    s, doc = jreq(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 200 and doc["total"] == 6 and doc["added"] == 6, doc
    s, robot = jreq(registry, "GET", f"/v1/robots/{sim.rid(3)}")
    assert s == 200 and robot["fleet"] == "fleet-a" and robot["source"] == src, robot

    mine = lambda ev: ev["data"]["robot_id"].startswith(sim.prefix)  # noqa: E731
    tail.collect(until=lambda ms: {e["data"]["robot_id"] for e in map(json.loads, (m.value() for m in ms))
                                   if mine(e) and e["type"] == "robot.heartbeat"} >= {sim.rid(i) for i in range(1, 7)},
                 timeout=30)
    beats = [e for e in tail.events() if mine(e) and e["type"] == "robot.heartbeat"]
    assert {e["subject"] for e in beats} == {sim.rid(i) for i in range(1, 7)}
    assert all(e["data"]["source"] == src and e["data"]["id"].startswith("evt_") for e in beats)

    target = sim.rid(2)
    cid = "cmd-" + uuid.uuid4().hex
    s, _, doc = sim.req("POST", f"/v1/robots/{target}/commands", command(cid), {"Idempotency-Key": cid})
    assert s == 202
    sent_at = time.time()

    def done(ms):
        evs = [json.loads(m.value()) for m in ms]
        after = [e for e in evs if e["subject"] == target and e["type"] == "command.result"]
        return after and any(e["subject"] == target and e["type"] == "robot.heartbeat"
                             and e["data"]["occurred_at"] > after[0]["data"]["occurred_at"]
                             for e in evs)
    tail.collect(until=done, timeout=30)
    evs = [e for e in tail.events() if e["subject"] == target]
    ts = lambda e: datetime.fromisoformat(e["data"]["occurred_at"].replace("Z", "+00:00")).timestamp()  # noqa: E731
    life = [e for e in evs if e["type"] in ("command.ack", "robot.booted", "command.result")]
    assert [e["type"] for e in life] == ["command.ack", "robot.booted", "command.result"], life
    ack, booted, result = life
    assert ack["data"]["data"]["command_id"] == cid and result["data"]["data"]["command_id"] == cid
    assert result["data"]["data"]["status"] == "succeeded" and result["data"]["data"]["message"]
    # silent while rebooting (--reboot-ms 2500): no heartbeat happened between the command
    # and the ack; concurrent deliveries may land in any order, so compare occurred_at
    assert ts(ack) - sent_at >= 2.0
    beats = [ts(e) for e in evs if e["type"] == "robot.heartbeat"]
    assert not [b for b in beats if sent_at + 0.2 < b < ts(ack)], (sent_at, ts(ack), beats)
    assert [b for b in beats if b >= ts(result)], "heartbeats resumed"
    tail.close()

    st = sim.stats()
    assert st["reboots"]["succeeded"] == 1 and st["commands"]["by_robot"] == {target: {"soft": 1, "hard": 0}}
    assert st["webhooks"]["registered"] == 1 and st["webhooks"]["by_status"].get("202", 0) >= 2
    assert st["webhooks"]["rejected"] == 0 and st["webhooks"]["failed"] == 0

    # a bad signature is refused by ingest and counted
    sim.req("POST", "/sim/misbehave", {"bad_signature": 1}, token=False)
    wait_for(lambda: sim.stats()["webhooks"]["by_status"].get("401", 0) >= 1, 10, "401 from ingest")
    sim.req("POST", "/sim/misbehave", {"bad_signature": 0}, token=False)
    assert sim.stop() == 0
    assert ingest.stop() == 0 and registry.stop() == 0

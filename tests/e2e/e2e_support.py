"""Helpers of the end-to-end tests. The integration conftest (tests/integration/
conftest.py: fixtures infra and service, http, wait_for, free_port, BIN) is
reused, not copied: when pytest has already imported it as module "conftest"
that module is taken, else it is loaded by file path under its own name, so
tests/integration and tests/e2e collect together."""

import importlib.util
import json
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

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
SERVICES = ("webhook-ingest", "robot-registry", "reboot-command", "config-center", "stream-processor")
AUTOMATION_ACTOR = {"X-Consumer-Username": "e2e"}


def ts(iso):
    """RFC 3339 -> epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def start_platform(service, tmp_path, sp_config=None, reboot_config=None, env=None):
    """The five services on free ports with short thresholds; returns name -> process.
    sp_config / reboot_config are dotted-key overrides of the services' example
    configs; env is added to every service's environment. Consumer groups are
    unique to the call, so a run never inherits another run's offsets."""
    tag = uuid.uuid4().hex[:8]
    cache = dict(env or {}, CONFIG_CACHE_DIR=str(tmp_path / "config-cache"))
    rc_cfg = {"reboot.ack_timeout_s": 30, "reboot.completion_timeout_s": 60,
              "reboot.fleet_max_concurrent": 1000000, "reboot.abort_min_count": 1000000}
    rc_cfg.update(reboot_config or {})
    sp_cfg = {"stream.offline_after_s": 4, "stream.reboot_grace_s": 600}
    sp_cfg.update(sp_config or {})
    ingest = service("webhook-ingest", env=cache)
    registry = service("robot-registry", env=cache, config=write_config(tmp_path, "robot-registry", {
        "registry.public_ingest_url": f"http://127.0.0.1:{ingest.port}/v1/webhooks/{{source}}"}))
    reboot = service("reboot-command", env=dict(cache, REBOOT_CONSUMER_GROUP="e2e-rc-" + tag),
                     config=write_config(tmp_path, "reboot-command", rc_cfg))
    center = service("config-center", env=cache)
    sp = service("stream-processor",
                 env=dict(cache, STREAM_GROUP_ID="e2e-sp-" + tag, STREAM_INSTANCE_ID="e2e-" + tag),
                 config=write_config(tmp_path, "stream-processor", sp_cfg))
    procs = dict(zip(SERVICES, (ingest, registry, reboot, center, sp)))
    for p in procs.values():
        p.wait_ready(timeout=60)
    return procs


class Sim:
    """A robot-sim process (the vendor platform) on a free port. args are extra
    command-line options, e.g. ["--silent", "3@5"]; robot ids are prefix00001..
    Defaults: heartbeats every 500 ms, 2 s of silence after a reboot, no random
    status changes or faults (scenarios script them)."""

    def __init__(self, tmp_path, prefix, robots, fleets=2, args=()):
        self.port = free_port()
        self.token = "tok-" + uuid.uuid4().hex
        self.prefix = prefix
        self.robots = robots
        self.log = open(tmp_path / f"robot-sim-{self.port}.log", "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [str(BIN / "robot-sim"), "--port", str(self.port), "--token", self.token,
             "--id-prefix", prefix, "--robots", str(robots), "--fleets", str(fleets),
             "--heartbeat-ms", "500", "--reboot-ms", "2000", "--status-prob", "0",
             "--fault-prob", "0", *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: self.proc.poll() is None and http("GET", self.url + "/healthz", timeout=2)[0] == 200,
                 20, "robot-sim /healthz")

    def rid(self, n):
        return f"{self.prefix}{n:05d}"

    def stats(self):
        s, _, b = http("GET", self.url + "/sim/stats")
        assert s == 200
        return json.loads(b)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def commands_sent(stats):
    """robot id -> counts of reboot commands the simulator received for it."""
    return {rid: c for rid, c in stats["commands"]["by_robot"].items() if c["soft"] + c["hard"] > 0}


def resume_automation(reboot):
    """A paused automation switch left in the shared Redis would stop every automatic reboot."""
    s, auto = jcall(reboot, "GET", "/v1/automation")
    assert s == 200, auto
    if auto.get("state") == "paused":
        assert jcall(reboot, "POST", "/v1/automation/resume", headers=AUTOMATION_ACTOR)[0] == 200


def register_fleet(registry, sim, policy=None):
    """Registers the simulator as a source through robot-registry (webhook
    registration + robot sync) and sets every robot's reboot policy; returns the
    source id."""
    src = "e2e-" + uuid.uuid4().hex[:8]
    s, doc = jcall(registry, "PUT", f"/v1/sources/{src}", {"base_url": sim.url, "api_token": sim.token})
    assert s == 201, doc
    s, doc = jcall(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 201, doc
    s, doc = jcall(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 200 and doc["total"] == sim.robots, doc
    for i in range(1, sim.robots + 1):
        s, doc = jcall(registry, "PATCH", f"/v1/robots/{sim.rid(i)}",
                       {"policy": policy or {"auto_reboot": True, "modes": ["soft", "hard"]}})
        assert s == 200, doc
    return src


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


class EventCounter:
    """robot.events.v1 from the offsets it had when created: counts the CloudEvents
    of robots whose id starts with a prefix, by type, and the ids seen more than once."""

    TOPIC = "robot.events.v1"

    def __init__(self, bootstrap):
        from confluent_kafka import TopicPartition

        self._tp = TopicPartition
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-count-" + uuid.uuid4().hex,
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        md = self.c.list_topics(self.TOPIC, timeout=10)
        self.start = {}
        for p in md.topics[self.TOPIC].partitions:
            lo, hi = self.c.get_watermark_offsets(TopicPartition(self.TOPIC, p), timeout=10)
            self.start[p] = hi

    def count(self, prefix, timeout=30):
        """Reads everything up to the current end; returns (ids -> times seen, type -> count)."""
        ends = {p: self.c.get_watermark_offsets(self._tp(self.TOPIC, p), timeout=10)[1] for p in self.start}
        todo = {p for p in self.start if ends[p] > self.start[p]}
        self.c.assign([self._tp(self.TOPIC, p, self.start[p]) for p in todo])
        ids, types = {}, {}
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            m = self.c.poll(0.2)
            if m is None or m.error():
                continue
            if m.offset() + 1 >= ends[m.partition()]:
                todo.discard(m.partition())
            key = (m.key() or b"").decode()
            if not key.startswith(prefix):
                continue
            ev = json.loads(m.value())
            ids[ev["id"]] = ids.get(ev["id"], 0) + 1
            types[ev["type"]] = types.get(ev["type"], 0) + 1
        assert not todo, f"robot.events.v1 partitions {sorted(todo)} not read to their end in {timeout}s"
        self.c.unassign()
        return ids, types

    def close(self):
        self.c.close()


# ---- helpers of test_scenarios.py (platforms shared by several tests, config
# releases, metrics, reboot concurrency from robot.command-status.v1) ----

TERMINAL_STATES = ("succeeded", "failed", "timed_out", "cancelled", "rejected")


def private_redis_url(infra, db):
    """The shared Redis server's database db, emptied: a platform started on it
    (start_platform(env={"REDIS_URL": url})) has config namespaces, fleet slots,
    reboot queue, cooldown and daily counters and robot records of its own, so
    releases and caps neither leak into nor inherit from other tests."""
    import redis

    url = infra["REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


class ServiceFactory:
    """The integration `service` fixture's factory, not tied to one test: for a
    platform shared by several tests (class- or module-scoped fixture).
    start_platform(ServiceFactory(dir), dir, ...); close() kills what still runs."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.started = []

    def __call__(self, name, env=None, config=None):
        p = ic.ServiceProcess(name, self.workdir, env=env, config=config).start()
        self.started.append(p)
        return p

    def close(self):
        for p in self.started:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


def metric_value(svc, name, labels=""):
    """One sample of svc's /metrics (labels as written there, e.g. 'namespace="x"'), or None."""
    s, _, body = svc.get("/metrics")
    assert s == 200
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series == want:
            return float(value)
    return None


def release_config(center, ns, text, user="e2e"):
    """Through config-center's API: PUT the namespace's draft (YAML text) and POST
    a release with If-Match on the draft's base version; returns the new version."""
    h = {"Content-Type": "application/yaml", "X-Consumer-Username": user}
    s, _, b = center.request("PUT", f"/v1/namespaces/{ns}/draft", body=text.encode(), headers=h)
    assert s == 200, b
    base = json.loads(b)["base_version"]
    s, hdr, b = center.request("POST", f"/v1/namespaces/{ns}/releases",
                               body=json.dumps({"comment": "e2e"}).encode(),
                               headers=dict(JSONH, **{"If-Match": f'"{base}"', "X-Consumer-Username": user}))
    doc = json.loads(b)
    assert s == 201 and doc["version"] == base + 1 and doc.get("announced") is True, (s, doc)
    return doc["version"]


def rebooting_intervals(reader, robots):
    """[(command_id, robot, dispatched at, terminal at or None)] of the given robots'
    commands on robot.command-status.v1 (StatusReader, drained by the caller)."""
    out = []
    for rid in robots:
        for cid, trans in reader.commands(rid).items():
            start = next((ts(d["at"]) for d in trans if d["state"] == "dispatched"), None)
            end = next((ts(d["at"]) for d in trans if d["state"] in TERMINAL_STATES), None)
            if start is not None:
                out.append((cid, rid, start, end))
    return out


def max_rebooting(intervals):
    """Most commands dispatched and not yet terminal at one instant. A slot is freed
    by the terminal transition before the next command is dispatched, so at equal
    timestamps the end counts first."""
    points = []
    for _, _, start, end in intervals:
        points.append((start, 1))
        points.append((end if end is not None else float("inf"), -1))
    n = peak = 0
    for _, d in sorted(points):
        n += d
        peak = max(peak, n)
    return peak

"""The whole platform loop, all real: robot-sim (the vendor) registered through
robot-registry sends signed webhooks to webhook-ingest; robot 3 goes silent at
t=5 s; stream-processor marks it offline after stream.offline_after_s and asks
for a hard reboot on robot.commands.v1; reboot-command dispatches exactly one
command to the simulator, whose ack, boot and result come back through
webhook-ingest, so the command ends `succeeded` on robot.command-status.v1 and
the robot is online again. Real Redis and Apache Kafka (fixture infra)."""

import json
import signal
import subprocess
import time
import uuid
from datetime import datetime

import redis

from e2e_support import BIN, STATUS_TOPIC, StatusReader, free_port, http, jcall, wait_for, write_config

ROBOTS = 6
SILENT_ROBOT = 3
SILENT_AT_S = 5
OFFLINE_AFTER_S = 4
DEADLINE_S = 60  # silence -> command succeeded and robot online
SERVICES = ("webhook-ingest", "robot-registry", "reboot-command", "config-center", "stream-processor")


def ts(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def start_platform(service, tmp_path):
    """The five services on free ports with short thresholds; returns name -> process."""
    tag = uuid.uuid4().hex[:8]
    cache = {"CONFIG_CACHE_DIR": str(tmp_path / "config-cache")}
    ingest = service("webhook-ingest", env=cache)
    registry = service("robot-registry", env=cache, config=write_config(tmp_path, "robot-registry", {
        "registry.public_ingest_url": f"http://127.0.0.1:{ingest.port}/v1/webhooks/{{source}}"}))
    reboot = service("reboot-command", env=dict(cache, REBOOT_CONSUMER_GROUP="e2e-rc-" + tag),
                     config=write_config(tmp_path, "reboot-command", {
                         "reboot.ack_timeout_s": 30, "reboot.completion_timeout_s": 60,
                         "reboot.fleet_max_concurrent": 1000000, "reboot.abort_min_count": 1000000}))
    center = service("config-center", env=cache)
    sp = service("stream-processor",
                 env=dict(cache, STREAM_GROUP_ID="e2e-sp-" + tag, STREAM_INSTANCE_ID="e2e-" + tag),
                 config=write_config(tmp_path, "stream-processor", {
                     "stream.offline_after_s": OFFLINE_AFTER_S, "stream.reboot_grace_s": 600}))
    procs = dict(zip(SERVICES, (ingest, registry, reboot, center, sp)))
    for p in procs.values():
        p.wait_ready(timeout=60)
    return procs


class Sim:
    def __init__(self, tmp_path, prefix):
        self.port = free_port()
        self.token = "tok-" + uuid.uuid4().hex
        self.prefix = prefix
        self.log = open(tmp_path / f"robot-sim-{self.port}.log", "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [str(BIN / "robot-sim"), "--port", str(self.port), "--token", self.token,
             "--id-prefix", prefix, "--robots", str(ROBOTS), "--fleets", "2",
             "--heartbeat-ms", "500", "--reboot-ms", "2000", "--status-prob", "0",
             "--fault-prob", "0", "--silent", f"{SILENT_ROBOT}@{SILENT_AT_S}"],
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
    return {rid: c for rid, c in stats["commands"]["by_robot"].items() if c["soft"] + c["hard"] > 0}


def test_silent_robot_is_rebooted_once_and_comes_back(service, infra, tmp_path):
    t_begin = time.monotonic()
    svc = start_platform(service, tmp_path)
    registry, reboot, sp = svc["robot-registry"], svc["reboot-command"], svc["stream-processor"]
    # A paused automation switch left in the shared Redis would stop every automatic reboot.
    s, auto = jcall(reboot, "GET", "/v1/automation")
    assert s == 200, auto
    if auto.get("state") == "paused":
        assert jcall(reboot, "POST", "/v1/automation/resume", headers={"X-Consumer-Username": "e2e"})[0] == 200

    # robot ids unique to this run: cooldowns and caps in the shared Redis never carry over
    sim = Sim(tmp_path, "e" + uuid.uuid4().hex[:6] + "-")
    statuses = StatusReader(infra["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        target = sim.rid(SILENT_ROBOT)
        src = "e2e-" + uuid.uuid4().hex[:8]
        s, doc = jcall(registry, "PUT", f"/v1/sources/{src}", {"base_url": sim.url, "api_token": sim.token})
        assert s == 201, doc
        s, doc = jcall(registry, "POST", f"/v1/sources/{src}/webhook-registration")
        assert s == 201, doc
        s, doc = jcall(registry, "POST", f"/v1/sources/{src}/sync")
        assert s == 200 and doc["total"] == ROBOTS, doc
        for i in range(1, ROBOTS + 1):
            s, doc = jcall(registry, "PATCH", f"/v1/robots/{sim.rid(i)}",
                           {"policy": {"auto_reboot": True, "modes": ["soft", "hard"]}})
            assert s == 200, doc
        registered_after = time.time() - sim.started
        assert registered_after < SILENT_AT_S - 1, f"registration took {registered_after:.1f}s"

        def status(rid):
            s, _, b = sp.get(f"/v1/state/{rid}")
            return json.loads(b)["status"] if s == 200 else None

        def online(rid):
            return status(rid) == "online"
        # stream-processor knows the robot from its heartbeats (a fresh consumer group first
        # replays the topic, so under `make test` it may already see the silence)
        wait_for(lambda: status(target) in ("online", "offline", "rebooting"), 30,
                 f"{target} known to stream-processor")
        silent_at = sim.started + SILENT_AT_S

        # silence -> offline -> one hard reboot reaches the simulator -> succeeded -> online
        def succeeded():
            statuses.drain(0.3)
            cmds = statuses.commands(target)
            return cmds if any(d["state"] == "succeeded" for ds in cmds.values() for d in ds) else None
        wait_for(lambda: target in commands_sent(sim.stats()), OFFLINE_AFTER_S + DEADLINE_S,
                 f"a reboot command for {target} at the simulator")
        wait_for(succeeded, DEADLINE_S, f"command of {target} succeeded on {STATUS_TOPIC}")
        wait_for(lambda: online(target), DEADLINE_S, f"{target} online again")

        # a few seconds later still exactly one command, for this robot only
        time.sleep(5)
        statuses.drain(1.0)
        st = sim.stats()
        sent = commands_sent(st)
        assert set(sent) == {target}, f"commands reached other robots: {sent}"
        assert sent[target]["soft"] + sent[target]["hard"] == 1, sent
        assert st["commands"]["duplicates_suppressed"] == 0, st["commands"]
        cmds = statuses.commands(target)
        assert len(cmds) == 1, {c: [d["state"] for d in ds] for c, ds in cmds.items()}
        (cid, trans), = cmds.items()
        states = [d["state"] for d in trans]
        assert states[-1] == "succeeded", states
        for before, after in (("requested", "dispatched"), ("dispatched", "succeeded")):
            assert before in states and states.index(before) < states.index(after), states
        assert states.count("succeeded") == 1, states
        others = {r for r in statuses.by_robot if r.startswith(sim.prefix) and r != target}
        assert not others, f"command status for other robots: {others}"
        r_state = redis.Redis.from_url(infra["REDIS_URL"]).hget(f"state:robot:{target}", "status")
        assert r_state == b"online", r_state

        dispatched = next(d for d in trans if d["state"] == "dispatched")
        print(f"\ne2e loop: {sum(st['events'].values())} events sent ({st['webhooks']['sent']} webhooks), "
              f"commands {sent}, command {cid} {' > '.join(states)}, "
              f"silent->dispatched {ts(dispatched['at']) - silent_at:.1f}s, "
              f"total {time.monotonic() - t_begin:.1f}s")
    finally:
        statuses.close()
        sim.stop()
    for name, p in svc.items():
        assert p.stop() == 0, f"{name} exit status, log: {p.output()[-2000:]}"

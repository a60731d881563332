"""Helpers for the stream-processor tests, written independently of the C code:
events are produced as webhook-ingest would (CloudEvents on robot.events.v1,
key = robot id), registry and command-status messages as their producers would
(proto/schemas), and outputs are read back with read_committed."""

import json
import os
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import ROOT, ServiceProcess, http, wait_for

EVENTS = "robot.events.v1"
COMMANDS = "robot.commands.v1"
STATE = "robot.state.v1"
REGISTRY = "robot.registry.v1"
STATUS = "robot.command-status.v1"
DLQ = "robot.events.dlq.v1"
T0 = 1_800_000_000.0
STARTED = []  # every processor started, so a failed test never leaves one running


def kill_started():
    while STARTED:
        p = STARTED.pop()
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()  # event time base (seconds); the rules use occurred_at, not the clock


def iso(ts):
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def ms(ts):
    return int(round(ts * 1000))


class Feed:
    """Produces CloudEvents like webhook-ingest (idempotent, acks=all)."""

    def __init__(self, conf=None):
        self.p = Producer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                           "enable.idempotence": True, "linger.ms": 2, **(conf or {})})
        self.failed = []  # delivery errors

    def event(self, robot, etype, at, data=None, ce_id=None, flush=True):
        ce_id = ce_id or "evt_" + uuid.uuid4().hex
        body = {"type": etype, "robot_id": robot, "occurred_at": iso(at), "id": ce_id,
                "data": data or {}, "source": "acme", "received_at": iso(time.time())}
        ce = {"specversion": "1.0", "id": ce_id, "source": "/webhook-ingest/acme", "type": etype,
              "subject": robot, "time": iso(at), "datacontenttype": "application/json",
              "data": body}
        self.p.produce(EVENTS, key=robot, value=json.dumps(ce),
                       headers=[("traceparent", "00-" + uuid.uuid4().hex + "-" + uuid.uuid4().hex[:16] + "-01")],
                       on_delivery=lambda err, _m: err and self.failed.append(err))
        if flush:
            self.p.flush(10)
        return ce_id

    def raw(self, topic, key, value):
        self.p.produce(topic, key=key, value=value)
        self.p.flush(10)

    def registry(self, robot, auto_reboot=True, modes=("soft", "hard")):
        rec = {"id": robot, "name": robot, "fleet": "f1", "source": "acme",
               "policy": {"auto_reboot": auto_reboot, "modes": list(modes)},
               "maintenance_window": {"cron": "0 3 * * *", "duration_s": 3600}, "busy": False}
        ce = {"specversion": "1.0", "id": "reg_" + uuid.uuid4().hex, "source": "/robot-registry",
              "type": "robot.upserted", "subject": robot, "time": iso(time.time()),
              "datacontenttype": "application/json", "data": rec}
        self.raw(REGISTRY, robot, json.dumps(ce))

    def command_status(self, robot, command_id, state):
        data = {"command_id": command_id, "robot_id": robot, "state": state, "mode": "hard",
                "reason": "offline", "origin": "automatic", "at": iso(time.time())}
        ce = {"specversion": "1.0", "id": f"{command_id}-{state}", "source": "/reboot-command",
              "type": "command.status", "subject": robot, "time": iso(time.time()),
              "datacontenttype": "application/json", "data": data}
        self.raw(STATUS, robot, json.dumps(ce))


def read_topic(topic, robots=None, timeout=8):
    """Every committed message of topic (read_committed), optionally only of these robots."""
    c = Consumer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                  "group.id": "sp-test-reader-" + uuid.uuid4().hex, "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, -2) for p in md.topics[topic].partitions]
    ends = {}
    for tp in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
        ends[tp.partition] = hi
    c.assign(parts)
    out = []
    done = {p for p, hi in ends.items() if hi == 0}
    deadline = time.monotonic() + timeout
    while len(done) < len(ends) and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None or m.error():
            # read_committed may stop short of the high watermark (aborted or open transactions)
            for tp in c.position(c.assignment()):
                if tp.offset >= 0 and tp.offset >= ends.get(tp.partition, 0):
                    done.add(tp.partition)
            continue
        if m.offset() + 1 >= ends[m.partition()]:
            done.add(m.partition())
        key = m.key().decode() if m.key() else None
        if robots is not None and key not in robots:
            continue
        out.append({"key": key, "value": json.loads(m.value()) if m.value() else None,
                    "partition": m.partition(), "offset": m.offset()})
    c.close()
    return out


def commands_for(robots, timeout=8):
    return [m["value"] for m in read_topic(COMMANDS, set(robots), timeout) if m["value"]]


def start_sp(workdir, infra, name="sp", group=None, instance=None, env=None, kafka=None,
             **stream):
    """Starts build/<BUILD>/bin/stream-processor with small test thresholds
    (kafka: librdkafka properties added to kafka.properties)."""
    settings = {"offline_after_s": 2, "fault_threshold": 3, "fault_window_s": 10,
                "allowed_lateness_s": 5, "reboot_grace_s": 600, "cycle_ms": 50,
                "mirror_heartbeat_s": 0}
    settings.update(stream)
    cfg = workdir / f"{name}.yaml"
    lines = ["log:", "  level: info", "kafka:", "  properties:",
             "    session.timeout.ms: 6000", "    heartbeat.interval.ms: 500"]
    lines += [f"    {k}: {v}" for k, v in (kafka or {}).items()] + ["stream:"]
    lines += [f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]
    cfg.write_text("\n".join(lines) + "\n")
    e = {"STREAM_GROUP_ID": group or "sp-test-" + uuid.uuid4().hex[:8],
         "STREAM_INSTANCE_ID": instance or "t-" + uuid.uuid4().hex[:8],
         "CONFIG_CACHE_DIR": str(workdir / "config-cache")}
    e.update(env or {})
    sp = ServiceProcess("stream-processor", workdir, env=e, config=cfg).start()
    STARTED.append(sp)
    sp.group = e["STREAM_GROUP_ID"]
    sp.instance = e["STREAM_INSTANCE_ID"]
    return sp


def wait_assigned(sp, timeout=40):
    wait_for(lambda: any("restored" in r["message"] for r in sp.log_records()), timeout,
             "partitions assigned and restored")


def state(sp, robot):
    status, _, body = http("GET", sp.url(f"/v1/state/{robot}"), timeout=5)
    return status, json.loads(body)


def metric(sp, name, labels=""):
    _, _, body = sp.get("/metrics")
    total = 0.0
    found = False
    for line in body.decode().splitlines():
        if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None

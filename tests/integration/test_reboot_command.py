"""reboot-command against real Redis, real Apache Kafka and a fake vendor:
every lifecycle path (with ack and completion timeouts), each policy rule,
the fleet queue, the abort switch, idempotency, vendor retries and the
circuit breaker, scheduling, two replicas with lease failover, and kill -9
in the middle of a dispatch."""

import json
import signal
import time
import uuid

import jsonschema
import pytest
import redis as redislib

from conftest import ROOT, wait_for
from reboot_helpers import (Api, Kafka, StatusTail, Vendor, add_robot, add_source, metric,
                            now_iso, reset_shared_keys, unique, write_config)

FAST = {"reboot.schedule_poll_ms": 100, "reboot.lease_ttl_ms": 2000,
        "reboot.cooldown_s": 0, "reboot.max_per_robot_per_day": 100,
        "dispatch.backoff_base_ms": 20, "dispatch.backoff_max_ms": 100,
        "dispatch.timeout_ms": 3000, "dispatch.retry_after_max_ms": 3000,
        "breaker.min_requests": 1000}


@pytest.fixture
def r(infra):
    client = redislib.Redis.from_url(infra["REDIS_URL"])
    reset_shared_keys(client)
    yield client
    reset_shared_keys(client)


@pytest.fixture
def vendor():
    v = Vendor()
    yield v
    v.stop()


@pytest.fixture
def kafka(infra):
    return Kafka(infra["KAFKA_BOOTSTRAP_SERVERS"])


@pytest.fixture
def world(r, vendor):
    """A fresh source pointing at the fake vendor; robot(...) adds robots to it."""
    src = unique("src")
    add_source(r, src, vendor.url, vendor.token)

    class World:
        source = src

        def robot(self, **kw):
            rid = unique("robot")
            add_robot(r, rid, src, **kw)
            return rid
    return World()


@pytest.fixture
def start(service, tmp_path):
    group = "rc-test-" + uuid.uuid4().hex[:8]

    def make(group_id=None, env=None, **overrides):
        cfg = write_config(tmp_path, **{**FAST, **{k.replace("__", "."): v
                                                   for k, v in overrides.items()}})
        svc = service("reboot-command",
                      env={"REBOOT_CONSUMER_GROUP": group_id or group, **(env or {})},
                      config=cfg).wait_ready()
        return svc, Api(svc)
    return make


def states(doc):
    return [h["state"] for h in doc["history"]]


def test_happy_path_lifecycle_status_events_and_audit(start, world, vendor, kafka, infra):
    svc, api = start()
    tail = StatusTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    rid = world.robot()
    status, doc = api.reboot(rid, {"mode": "hard", "reason": "operator check"})
    assert status == 202, doc
    cid = doc["command_id"]
    assert doc["state"] == "requested"
    assert uuid.UUID(cid).version == 7
    api.wait_state(cid, "dispatched")
    wait_for(lambda: vendor.calls_for(cid), 10, "vendor call")
    call = vendor.calls_for(cid)[0]
    assert call["path"] == f"/v1/robots/{rid}/commands"
    assert call["auth"] == f"Bearer {vendor.token}"
    assert call["body"] == {"command_id": cid, "type": "reboot", "mode": "hard",
                            "reason": "operator check"}
    kafka.vendor_event("command.ack", rid, command_id=cid)
    api.wait_state(cid, "acknowledged")
    kafka.vendor_event("command.result", rid, command_id=cid, status="succeeded", message="ok")
    doc = api.wait_state(cid, "succeeded")
    assert states(doc) == ["requested", "queued", "dispatched", "acknowledged", "succeeded"]
    assert doc["requested_by"] == "alice" and doc["origin"] == "api"
    assert doc["history"][0]["actor"] == "alice"
    assert doc["history"][3]["actor"] == "vendor"

    tail.until(lambda m: tail.states(cid)[-1:] == ["succeeded"])
    assert tail.states(cid) == states(doc)
    schema = json.loads((ROOT / "proto/schemas/command-status.schema.json").read_text())
    for m in tail.messages:
        ce = json.loads(m.value())
        if ce["data"]["command_id"] != cid:
            continue
        assert m.key() == rid.encode() and ce["type"] == "command.status"
        assert ce["subject"] == rid
        jsonschema.validate(ce["data"], schema)
        assert ce["data"]["operator"] == "alice"
        assert dict(m.headers() or [])["traceparent"]
    tail.close()
    assert metric(svc, "reboot_commands_total", 'state="succeeded",origin="api"') >= 1
    assert metric(svc, "reboot_dispatch_latency_seconds_count") >= 1


def test_result_failed_and_booted_end_commands(start, world, kafka):
    svc, api = start()
    a, b = world.robot(), world.robot()
    _, doc = api.reboot(a)
    ca = doc["command_id"]
    _, doc = api.reboot(b)
    cb = doc["command_id"]
    api.wait_state(ca, "dispatched")
    api.wait_state(cb, "dispatched")
    kafka.vendor_event("command.result", a, command_id=ca, status="failed",
                       message="robot refused: e-stop pressed")
    doc = api.wait_state(ca, "failed")
    assert doc["detail"] == "robot refused: e-stop pressed"
    # robot.booted without a command id ends the robot's newest command
    kafka.vendor_event("command.ack", b, command_id=cb)
    api.wait_state(cb, "acknowledged")
    kafka.vendor_event("robot.booted", b)
    assert api.wait_state(cb, "succeeded")["detail"] == "the robot booted"
    # a result for another robot's command is ignored
    _, doc = api.reboot(a)
    cc = doc["command_id"]
    api.wait_state(cc, "dispatched")
    kafka.vendor_event("command.result", b, command_id=cc, status="succeeded")
    time.sleep(1.5)
    assert api.command(cc)["state"] == "dispatched"


def test_ack_timeout_and_completion_timeout(start, world, kafka):
    svc, api = start(reboot__ack_timeout_s=1, reboot__completion_timeout_s=2)
    a, b = world.robot(), world.robot()
    _, doc = api.reboot(a)
    ca = doc["command_id"]
    _, doc = api.reboot(b)
    cb = doc["command_id"]
    api.wait_state(cb, "dispatched")
    kafka.vendor_event("command.ack", b, command_id=cb)
    api.wait_state(cb, "acknowledged")
    doc = api.wait_state(ca, "timed_out", timeout=10)
    assert states(doc) == ["requested", "queued", "dispatched", "timed_out"]
    assert "no acknowledgement" in doc["detail"]
    doc = api.wait_state(cb, "timed_out", timeout=10)
    assert states(doc)[-2:] == ["acknowledged", "timed_out"]
    assert "no result" in doc["detail"]
    # a late result changes nothing
    kafka.vendor_event("command.result", b, command_id=cb, status="succeeded")
    time.sleep(1)
    assert api.command(cb)["state"] == "timed_out"


BAD_BODIES = [
    (b"{", "body"),
    (b"[]", "body"),
    (json.dumps({"mode": "warm", "reason": "x"}).encode(), "mode"),
    (json.dumps({"mode": "soft"}).encode(), "reason"),
    (json.dumps({"mode": "soft", "reason": "x", "force": "yes"}).encode(), "force"),
    (json.dumps({"mode": "soft", "reason": "x", "at": "tomorrow"}).encode(), "at"),
    (json.dumps({"mode": "soft", "reason": "x", "at": "2020-01-01T00:00:00Z"}).encode(), "at"),
    (json.dumps({"mode": "soft", "reason": "x", "window": "later"}).encode(), "window"),
    (json.dumps({"mode": "soft", "reason": "x", "window": "next",
                 "at": "2099-01-01T00:00:00Z"}).encode(), "window"),
]


def test_bad_bodies_are_400_naming_the_field_and_store_nothing(start, world, r):
    svc, api = start()
    rid = world.robot()
    for body, field in BAD_BODIES:
        status, doc = api.reboot(rid, raw=body)
        assert status == 400, (body, doc)
        assert doc["field"] == field, (body, doc)
    status, doc = api.reboot(rid, key="bad key with spaces")
    assert status == 400 and doc["field"] == "Idempotency-Key"
    assert r.zcard(f"cmds:robot:{rid}") == 0


def test_unknown_robot_busy_veto_force_and_listing(start, world):
    svc, api = start()
    status, doc = api.reboot("no-such-robot-" + uuid.uuid4().hex[:6])
    assert status == 404 and doc["field"] == "id"
    busy = world.robot(busy=True)
    status, doc = api.reboot(busy)
    assert status == 423 and doc["rule"] == "busy", doc
    status, doc = api.reboot(busy, {"mode": "soft", "reason": "override", "force": True})
    assert status == 202
    api.wait_state(doc["command_id"], "dispatched")
    # listing: by robot, by state, cursor pagination without gaps
    rid = world.robot()
    ids = [api.reboot(rid)[1]["command_id"] for _ in range(5)]
    for cid in ids:
        api.wait_state(cid, "dispatched")
    seen, cursor = [], None
    while True:
        q = f"/v1/commands?robot_id={rid}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = api.get(q)
        assert status == 200 and len(page["items"]) <= 2
        seen += [i["command_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    status, page = api.get(f"/v1/commands?robot_id={rid}&state=failed")
    assert status == 200 and page["items"] == []
    assert api.get("/v1/commands?state=exploded")[1]["field"] == "state"
    assert api.get("/v1/commands?cursor=zzz")[1]["field"] == "cursor"
    assert api.get("/v1/commands/nope")[0] == 404
    assert api.post("/v1/commands/nope/cancel")[0] == 404


def test_idempotency_key_returns_the_same_command(start, world, vendor, r):
    svc, api = start()
    rid, other = world.robot(), world.robot()
    key = unique("key")
    s1, d1 = api.reboot(rid, key=key)
    s2, d2 = api.reboot(rid, key=key)
    assert s1 == 202 and s2 == 200, (d1, d2)
    assert d1["command_id"] == d2["command_id"]
    api.wait_state(d1["command_id"], "dispatched")
    s3, d3 = api.reboot(rid, key=key)
    assert s3 == 200 and d3 == {"command_id": d1["command_id"], "state": "dispatched"}
    status, doc = api.reboot(other, key=key)
    assert status == 409 and doc["field"] == "Idempotency-Key"
    # the key is per caller: bob's key is another command
    status, doc = api.reboot(rid, key=key, user="bob")
    assert status == 202 and doc["command_id"] != d1["command_id"]
    time.sleep(1)
    assert len(vendor.calls_for(d1["command_id"])) == 1
    assert r.zcard(f"cmds:robot:{rid}") == 2


def test_cooldown_and_daily_cap_refuse_exactly_when_they_should(start, world, kafka):
    svc, api = start(reboot__cooldown_s=3600)
    rid = world.robot()
    status, doc = api.reboot(rid)
    assert status == 202
    api.wait_state(doc["command_id"], "dispatched")
    status, doc = api.reboot(rid)
    assert status == 409 and doc["rule"] == "cooldown", doc
    # an automatic request for the same robot is rejected by the lane with the rule
    cid = kafka.automatic(rid)
    doc = api.wait_state(cid, "rejected")
    assert doc["rule"] == "cooldown" and doc["origin"] == "automatic"
    # another robot is not affected
    assert api.reboot(world.robot())[0] == 202


def test_daily_cap(start, world):
    svc, api = start(reboot__max_per_robot_per_day=2)
    rid = world.robot()
    for _ in range(2):
        status, doc = api.reboot(rid)
        assert status == 202
        api.wait_state(doc["command_id"], "dispatched")
    status, doc = api.reboot(rid)
    assert status == 409 and doc["rule"] == "daily_cap", doc


def test_fleet_cap_queues_and_releases_in_order(start, world, vendor, kafka):
    svc, api = start(reboot__fleet_max_concurrent=1)
    robots = [world.robot() for _ in range(3)]
    ids = []
    # one after another: the robots may be on different lanes, arrival order is the test's
    for rid, state in zip(robots, ["dispatched", "queued", "queued"]):
        status, doc = api.reboot(rid)
        assert status == 202
        ids.append(doc["command_id"])
        api.wait_state(ids[-1], state)
    assert metric(svc, "reboot_queue_depth") == 2
    time.sleep(0.5)
    assert api.command(ids[1])["state"] == "queued"
    kafka.vendor_event("command.result", robots[0], command_id=ids[0], status="succeeded")
    api.wait_state(ids[1], "dispatched")
    assert api.command(ids[2])["state"] == "queued"
    # cancelling a queued command frees nothing and skips it
    kafka.vendor_event("command.result", robots[1], command_id=ids[1], status="failed")
    api.wait_state(ids[2], "dispatched")
    order = [c["key"] for c in vendor.calls]
    assert [i for i in order if i in ids] == ids


def test_cancel_only_before_dispatch(start, world):
    svc, api = start(reboot__fleet_max_concurrent=1)
    a, b = world.robot(), world.robot()
    ca = api.reboot(a)[1]["command_id"]
    api.wait_state(ca, "dispatched")  # a holds the one slot (robots may be on other lanes)
    cb = api.reboot(b)[1]["command_id"]
    api.wait_state(cb, "queued")
    status, doc = api.post(f"/v1/commands/{cb}/cancel")
    assert status == 200 and doc["state"] == "cancelled"
    assert states(api.command(cb))[-1] == "cancelled"
    assert api.command(cb)["history"][-1]["actor"] == "alice"
    api.wait_state(ca, "dispatched")
    status, doc = api.post(f"/v1/commands/{ca}/cancel")
    assert status == 409 and "dispatched" in doc["detail"]


def test_abort_switch_trips_refuses_automatic_and_resumes(start, world, vendor, kafka):
    svc, api = start(reboot__abort_min_count=2, reboot__abort_failure_ratio=0.5)
    vendor.default = (400, {}, {"title": "Bad Request", "detail": "robot offline at vendor"})
    for _ in range(2):
        cid = api.reboot(world.robot())[1]["command_id"]
        doc = api.wait_state(cid, "failed")
        assert doc["detail"] == "vendor answered 400: robot offline at vendor"
    status, auto = api.get("/v1/automation")
    assert status == 200 and auto["state"] == "paused", auto
    vendor.default = (202, {}, {})
    rid = world.robot()
    cid = kafka.automatic(rid)
    assert api.wait_state(cid, "rejected")["rule"] == "abort_switch"
    status, doc = api.reboot(rid)
    assert status == 409 and doc["rule"] == "abort_switch"
    status, doc = api.reboot(rid, {"mode": "soft", "reason": "operator override", "force": True})
    assert status == 202
    status, auto = api.post("/v1/automation/resume")
    assert status == 200 and auto["state"] == "running" and auto["by"] == "alice"
    cid = kafka.automatic(world.robot())
    api.wait_state(cid, "dispatched")


def test_automatic_requests_follow_robot_policy_and_windows(start, world, kafka):
    svc, api = start()
    no_auto = world.robot(auto=False)
    assert api.wait_state(kafka.automatic(no_auto), "rejected")["rule"] == "robot_policy"
    soft_only = world.robot(modes=("soft",))
    assert api.wait_state(kafka.automatic(soft_only, mode="hard"), "rejected")["rule"] == \
        "robot_policy"
    # non-urgent (soft) automatic reboots wait for the robot's window: an hour a day that
    # starts 12 hours from now, so the test never runs inside it
    hour = (time.gmtime().tm_hour + 12) % 24
    windowed = world.robot(window={"cron": f"0 {hour} * * *", "duration_s": 3600})
    cid = kafka.automatic(windowed, mode="soft", reason="fault_storm")
    doc = api.wait_state(cid, "scheduled")
    at = doc["scheduled_for"]
    assert at.endswith(f"T{hour:02d}:00:00.000Z"), at
    # urgent (hard) ones go now
    cid = kafka.automatic(windowed, mode="hard")
    api.wait_state(cid, "dispatched")
    # inside the window: now
    open_now = world.robot(window={"cron": "* * * * *", "duration_s": 600})
    api.wait_state(kafka.automatic(open_now, mode="soft", reason="fault_storm"), "dispatched")
    # window: next from the API; a robot without one is refused
    status, doc = api.reboot(world.robot(), {"mode": "soft", "reason": "x", "window": "next"})
    assert status == 409 and doc["rule"] == "maintenance_window"
    status, doc = api.reboot(windowed, {"mode": "soft", "reason": "x", "window": "next"})
    assert status == 202
    assert api.wait_state(doc["command_id"], "scheduled")["scheduled_for"] == at
    # replaying the same automatic request changes nothing
    kafka.automatic(no_auto, command_id=cid)
    time.sleep(1)
    assert api.command(cid)["state"] == "dispatched"


def test_scheduled_at_fires_once_and_can_be_cancelled(start, world, vendor):
    svc, api = start()
    rid = world.robot()
    status, doc = api.reboot(rid, {"mode": "soft", "reason": "x", "at": now_iso(2.5)})
    assert status == 202
    cid = doc["command_id"]
    api.wait_state(cid, "scheduled")
    assert not vendor.calls_for(cid)
    doc = api.wait_state(cid, "dispatched", timeout=15)
    assert states(doc) == ["requested", "scheduled", "queued", "dispatched"]
    later = api.reboot(world.robot(), {"mode": "soft", "reason": "x", "at": now_iso(60)})[1]
    api.wait_state(later["command_id"], "scheduled")
    assert api.post(f"/v1/commands/{later['command_id']}/cancel")[0] == 200
    assert api.post(f"/v1/commands/{later['command_id']}/cancel")[0] == 409
    time.sleep(1)
    assert len(vendor.calls_for(cid)) == 1
    assert metric(svc, "reboot_commands_total", 'state="dispatched",origin="scheduled"') >= 1


def test_vendor_retries_keep_the_idempotency_key(start, world, vendor):
    svc, api = start()
    vendor.script = [(500, {}, {}), (503, {}, {}), (202, {}, {})]
    cid = api.reboot(world.robot())[1]["command_id"]
    wait_for(lambda: len(vendor.calls_for(cid)) == 3, 15, "three attempts")
    time.sleep(0.5)
    assert api.command(cid)["state"] == "dispatched"
    assert api.command(cid)["vendor_status"] == "202"
    vendor.script = [(429, {"Retry-After": "1"}, {}), (202, {}, {})]
    cid2 = api.reboot(world.robot())[1]["command_id"]
    wait_for(lambda: len(vendor.calls_for(cid2)) == 2, 15, "retry after 429")
    calls = vendor.calls_for(cid2)
    assert calls[1]["at"] - calls[0]["at"] >= 0.9
    # a 4xx other than 429 is not retried
    vendor.script = [(409, {}, {"detail": "idempotency key reused with another body"})]
    cid3 = api.reboot(world.robot())[1]["command_id"]
    doc = api.wait_state(cid3, "failed")
    assert "409" in doc["detail"] and "reused" in doc["detail"]
    assert len(vendor.calls_for(cid3)) == 1
    assert metric(svc, "reboot_vendor_errors_total", 'code="409"') == 1


def test_breaker_opens_on_a_failing_vendor_and_recovers(start, world, vendor):
    svc, api = start(dispatch__max_retries=0, breaker__min_requests=3, breaker__error_ratio=0.5,
                     breaker__open_ms=1500, breaker__window_ms=30000)
    vendor.default = (500, {}, {})
    for _ in range(3):
        api.wait_state(api.reboot(world.robot())[1]["command_id"], "failed")
    wait_for(lambda: metric(svc, "reboot_breaker_state", f'vendor="{world.source}"') == 1, 5,
             "breaker open")
    n = len(vendor.calls)
    doc = api.wait_state(api.reboot(world.robot())[1]["command_id"], "failed")
    assert "open" in doc["detail"] and len(vendor.calls) == n  # not called while open
    vendor.default = (202, {}, {})
    time.sleep(1.7)
    cid = api.reboot(world.robot())[1]["command_id"]
    api.wait_state(cid, "dispatched")
    wait_for(lambda: api.command(cid).get("vendor_status") == "202", 5, "probe answered")
    assert metric(svc, "reboot_breaker_state", f'vendor="{world.source}"') == 0


def test_slow_vendor_does_not_stall_other_vendors(start, world, vendor, r):
    fast = Vendor()
    try:
        fast_src = unique("src")
        add_source(r, fast_src, fast.url, fast.token)
        svc, api = start(dispatch__workers=4, dispatch__per_vendor_max=2)
        vendor.slow_s = 2.0
        for _ in range(6):
            api.reboot(world.robot())
        rid = unique("robot")
        add_robot(r, rid, fast_src)
        t0 = time.monotonic()
        cid = api.reboot(rid)[1]["command_id"]
        wait_for(lambda: fast.calls_for(cid), 5, "fast vendor call")
        assert time.monotonic() - t0 < 1.5
    finally:
        fast.stop()


def test_two_replicas_lease_and_kill_9_failover(start, world, vendor, r):
    group = "rc-pair-" + uuid.uuid4().hex[:8]
    a, api_a = start(group_id=group, reboot__fleet_max_concurrent=100)
    b, api_b = start(group_id=group, reboot__fleet_max_concurrent=100)
    wait_for(lambda: (metric(a, "reboot_lease_holder") or 0) + (metric(b, "reboot_lease_holder") or 0) == 1,
             10, "one lease holder")
    ids = []
    for i in range(20):
        api = api_a if i % 2 else api_b
        ids.append(api.reboot(world.robot())[1]["command_id"])
    for cid in ids:
        api_a.wait_state(cid, "dispatched")
    time.sleep(1)
    for cid in ids:
        assert len(vendor.calls_for(cid)) == 1, cid
    holder, other = (a, b) if metric(a, "reboot_lease_holder") == 1 else (b, a)
    other_api = api_b if holder is a else api_a
    status, doc = other_api.reboot(world.robot(), {"mode": "soft", "reason": "x",
                                                   "at": now_iso(2.0)})
    cid = doc["command_id"]
    other_api.wait_state(cid, "scheduled")
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    doc = other_api.wait_state(cid, "dispatched", timeout=20)
    assert metric(other, "reboot_lease_holder") == 1
    time.sleep(1)
    assert len(vendor.calls_for(cid)) == 1
    assert states(doc).count("dispatched") == 1


def test_kill_9_mid_dispatch_resends_with_the_same_key(start, world, vendor, kafka):
    svc, api = start(reboot__stuck_after_s=2)
    vendor.slow_s = 30
    rid = world.robot()
    cid = api.reboot(rid)[1]["command_id"]
    wait_for(lambda: vendor.calls_for(cid), 10, "dispatch in flight")
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait()
    vendor.slow_s = 0
    svc2, api2 = start(reboot__stuck_after_s=2)
    wait_for(lambda: len(vendor.calls_for(cid)) == 2, 20, "resend after restart")
    calls = vendor.calls_for(cid)
    assert calls[0]["key"] == calls[1]["key"] == cid
    assert calls[0]["body"] == calls[1]["body"]
    kafka.vendor_event("command.ack", rid, command_id=cid)
    kafka.vendor_event("command.result", rid, command_id=cid, status="succeeded")
    doc = api2.wait_state(cid, "succeeded")
    assert states(doc).count("dispatched") == 1
    time.sleep(2.5)
    assert len(vendor.calls_for(cid)) == 2


def test_sigterm_exits_cleanly(start):
    svc, api = start()
    assert svc.stop() == 0
    svc.log_records()


def test_listing_filters_walk_past_the_scan_cap_without_gaps(start, r):
    """3,000 commands written in the documented layout (more than one page's
    scan cap): every filter returns each match once, oldest first."""
    svc, api = start()
    base = int(time.time() * 1000) + 10 * 86400 * 1000  # after every other test's commands
    ra, rb = unique("robot"), unique("robot")
    tag = uuid.uuid4().hex[:6]
    rows = []
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        cid = f"lst-{tag}-{i:05d}"
        ms = base + i // 3  # three commands share each millisecond
        robot = rb if i % 400 == 7 or i >= 2990 else ra
        state = "succeeded" if i == 5 or i >= 2985 else "failed" if i % 700 == 1 else "rejected"
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".%03dZ" % (ms % 1000)
        pipe.hset(f"cmd:{cid}", mapping={
            "id": cid, "robot_id": robot, "mode": "soft", "reason": "list", "origin": "api",
            "force": "0", "window": "", "at_ms": "0", "requested_by": "alice", "state": state,
            "created_ms": ms, "created_at": iso, "updated_at": iso})
        pipe.zadd(f"cmds:robot:{robot}", {cid: ms})
        pipe.zadd("cmds:all", {cid: ms})
        rows.append((cid, robot, state, ms))
    pipe.execute()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base / 1000)) + ".%03dZ" % (base % 1000)
    try:
        def walk(query, limit):
            seen, cursor, pages = [], None, 0
            while True:
                q = f"/v1/commands?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
                status, page = api.get(q)
                assert status == 200, page
                assert len(page["items"]) <= limit
                seen += [i["command_id"] for i in page["items"]]
                cursor = page["next_cursor"]
                pages += 1
                assert pages < 100
                if not cursor:
                    return seen

        def want(pred):
            return [c for c, robot, state, ms in rows if pred(robot, state, ms)]

        cases = [
            (f"since={since}", 500, want(lambda rob, st, ms: True)),
            (f"since={since}&state=succeeded", 50, want(lambda rob, st, ms: st == "succeeded")),
            (f"since={since}&state=failed", 3, want(lambda rob, st, ms: st == "failed")),
            (f"robot_id={ra}&state=succeeded", 7, want(lambda rob, st, ms: rob == ra and st == "succeeded")),
            (f"robot_id={rb}&since={since}", 4, want(lambda rob, st, ms: rob == rb)),
        ]
        for query, limit, expected in cases:
            got = walk(query, limit)
            assert len(got) == len(set(got)), f"duplicates for {query}"
            assert got == expected, f"{query}: {len(got)} of {len(expected)}"
        # a later `since` starts inside the same-millisecond groups
        later = base + 999
        iso_later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(later / 1000)) + ".%03dZ" % (later % 1000)
        assert walk(f"since={iso_later}&state=rejected", 100) == \
            want(lambda rob, st, ms: st == "rejected" and ms >= later)
    finally:
        pipe = r.pipeline(transaction=False)
        for cid, robot, _, _ in rows:
            pipe.delete(f"cmd:{cid}")
            pipe.zrem(f"cmds:robot:{robot}", cid)
            pipe.zrem("cmds:all", cid)
        pipe.execute()


def test_safety_policy_released_in_config_center_applies_without_restart(start, world, r):
    """The reboot-command namespace released the way config-center stores it
    (config:reboot-command:released) changes cooldown and the daily cap live."""
    import hashlib
    ns = "config:reboot-command:released"
    r.delete(ns)

    def release(version, doc):
        content = json.dumps(doc)
        r.hset(ns, mapping={"version": version, "content": content,
                            "checksum": hashlib.sha256(content.encode()).hexdigest()})
        wait_for(lambda: metric(svc, "config_version", 'namespace="reboot-command"') == version,
                 10, f"config version {version} applied")

    # config-center announces releases on its topic; the client's resync finds them without it
    svc, api = start(env={"CONFIG_RESYNC_S": "1"}, reboot__cooldown_s=3600,
                     reboot__max_per_robot_per_day=100)
    try:
        assert metric(svc, "config_version", 'namespace="reboot-command"') == 0
        pid = svc.proc.pid
        rid = world.robot()
        status, doc = api.reboot(rid)
        assert status == 202
        api.wait_state(doc["command_id"], "dispatched")
        status, doc = api.reboot(rid)
        assert status == 409 and doc["rule"] == "cooldown", doc
        # release 1: no cooldown -> the same request is admitted now
        release(1, {"reboot": {"cooldown_s": 0}})
        status, doc = api.reboot(rid)
        assert status == 202, doc
        api.wait_state(doc["command_id"], "dispatched")
        # release 2: daily cap 2 -> the robot's third reboot today is refused
        release(2, {"reboot": {"cooldown_s": 0, "max_per_robot_per_day": 2}})
        status, doc = api.reboot(rid)
        assert status == 409 and doc["rule"] == "daily_cap", doc
        other = world.robot()
        assert api.reboot(other)[0] == 202
        assert svc.proc.pid == pid and svc.proc.poll() is None  # no restart
    finally:
        r.delete(ns)


def test_kill_9_after_transitions_loses_no_status_event(start, world, vendor, kafka, infra):
    """kill -9 with many commands in flight: after a restart every transition in
    every command's Redis history has its event on robot.command-status.v1 (the
    outbox), and no command is dispatched twice."""
    tail = StatusTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    group = "rc-crash-" + uuid.uuid4().hex[:8]
    cfg = dict(group_id=group, reboot__fleet_max_concurrent=1000, reboot__stuck_after_s=2)
    svc, api = start(**cfg)
    robots = [world.robot() for _ in range(150)]
    ids = []
    for rid in robots:
        cid = f"crash-{rid}"
        ce = {"specversion": "1.0", "id": cid, "source": "/stream-processor",
              "type": "robot.reboot.requested", "subject": rid, "time": now_iso(),
              "datacontenttype": "application/json",
              "data": {"command_id": cid, "robot_id": rid, "mode": "hard", "reason": "offline",
                       "origin": "automatic", "requested_at": now_iso(), "force": False}}
        kafka.p.produce("robot.commands.v1", key=rid.encode(), value=json.dumps(ce).encode())
        ids.append(cid)
    assert kafka.p.flush(15) == 0
    wait_for(lambda: len(vendor.calls) >= 10, 20, "dispatches under way")
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait()
    in_flight = len(ids) - len({c["key"] for c in vendor.calls})
    svc2, api2 = start(**cfg)
    for cid in ids:
        api2.wait_state(cid, "dispatched", timeout=30)
    # "dispatched" is recorded before the vendor call: a call the kill cut off is resent by
    # the new leader's stuck-dispatch sweep (stuck_after_s), once the old lease has expired
    wait_for(lambda: all(vendor.calls_for(cid) for cid in ids), 30,
             "every command reached the vendor (resent after the kill)")
    histories = {cid: api2.command(cid)["history"] for cid in ids}
    expected = {f"{cid}.{i + 1}": (cid, h["state"])
                for cid, hist in histories.items() for i, h in enumerate(hist)}

    def events_by_id(msgs):
        out = {}
        for m in msgs:
            ev = json.loads(m.value())
            if ev["data"]["command_id"] in histories:
                out.setdefault(ev["id"], set()).add((ev["data"]["command_id"], ev["data"]["state"]))
        return out
    tail.until(lambda msgs: set(events_by_id(msgs)) >= set(expected), timeout=30)
    got = events_by_id(tail.messages)
    tail.close()
    missing = set(expected) - set(got)
    assert not missing, sorted(missing)[:5]
    assert set(got) == set(expected), sorted(set(got) - set(expected))[:5]
    for eid, (cid, state) in expected.items():
        assert got[eid] == {(cid, state)}, eid  # a repeat carries the same id and state
    for cid, hist in histories.items():
        assert [h["state"] for h in hist].count("dispatched") == 1, cid
        calls = vendor.calls_for(cid)
        assert 1 <= len(calls) <= 2, (cid, len(calls))  # a resend after the kill keeps the key
        assert all(c["body"] == calls[0]["body"] for c in calls)
    assert in_flight > 0  # the kill really hit commands in flight

"""stream-processor against real Apache Kafka and Redis: offline and fault-storm
rules, lateness, duplicates, poison messages, hot config, crash consistency
under kill -9, and a rebalance between two instances."""

import hashlib
import json
import random
import signal
import threading
import time
import uuid

import pytest
import redis

from conftest import wait_for
from sp_helpers import (DLQ, STATE, T0, Feed, commands_for, kill_started, metric, ms, read_topic,
                        start_sp, state, wait_assigned)


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


SHARED = {}


def stop_shared():
    p = SHARED.pop("sp", None)
    if p is not None:
        assert p.stop() == 0, p.output()[-3000:]
        p.log_records()  # every line JSON, no sanitizer report


@pytest.fixture(scope="module")
def sp(infra, tmp_path_factory):
    """One processor shared by the rule tests (they use distinct robots). Every
    group reads every robot, so tests that count requests across their own
    groups stop it first (exclusive)."""
    p = start_sp(tmp_path_factory.mktemp("sp"), infra)
    SHARED["sp"] = p
    p.wait_ready()
    wait_assigned(p)
    yield p
    stop_shared()


@pytest.fixture
def exclusive(infra):
    stop_shared()
    yield
    kill_started()


@pytest.fixture(scope="module")
def feed(infra):
    return Feed()


def test_offline_exactly_once_then_online(sp, feed, infra):
    robot, vetoed = uid("off"), uid("veto")
    feed.registry(vetoed, auto_reboot=False)
    for i in range(3):
        feed.event(robot, "robot.heartbeat", time.time())
        feed.event(vetoed, "robot.heartbeat", time.time())
        time.sleep(0.3)
    assert state(sp, robot)[1]["status"] == "online"
    # silent for offline_after_s = 2: offline and one hard reboot request
    wait_for(lambda: state(sp, robot)[1]["status"] == "offline", 6, "offline")
    time.sleep(2.5)  # a second deadline must not request again
    cmds = commands_for([robot, vetoed])
    assert [(c["data"]["robot_id"], c["data"]["mode"], c["data"]["reason"]) for c in cmds] == \
        [(robot, "hard", "offline")], cmds
    c = cmds[0]
    assert c["type"] == "robot.reboot.requested" and c["subject"] == robot
    assert c["id"] == c["data"]["command_id"] and c["id"].startswith(f"sp-{robot}-offline-")
    assert c["data"]["origin"] == "automatic" and c["data"]["force"] is False
    assert state(sp, vetoed)[1]["status"] == "offline"  # the policy vetoed the request only
    r = redis.Redis.from_url(infra["REDIS_URL"], decode_responses=True)
    wait_for(lambda: r.hget(f"state:robot:{robot}", "status") == "offline", 3, "mirror offline")

    # heartbeats resume: online again, still no second request
    feed.event(robot, "robot.heartbeat", time.time())
    wait_for(lambda: state(sp, robot)[1]["status"] == "online", 3, "online again")
    st = state(sp, robot)[1]
    assert st["reboot_in_progress"] is True and st["last_command_id"] == c["id"]
    wait_for(lambda: r.hget(f"state:robot:{robot}", "status") == "online", 3, "mirror online")
    statuses = [m["value"]["data"]["status"] for m in read_topic(STATE, {robot}) if m["value"]]
    assert statuses == ["online", "offline", "online"], statuses
    # a terminal command status ends the reboot; a replayed older version never wins in Redis
    feed.command_status(robot, c["id"], "succeeded")
    wait_for(lambda: state(sp, robot)[1]["reboot_in_progress"] is False, 3, "reboot over")
    v = int(r.hget(f"state:robot:{robot}", "version"))
    assert len(commands_for([robot])) == 1
    assert metric(sp, "stream_timers_fired_total") >= 2
    assert metric(sp, "stream_reboot_requests_total", 'reason="offline"') >= 1
    assert v >= 4


def test_fault_storm_window_edges_lateness_order_and_duplicates(sp, feed):
    edge, past_edge, shuffled, late, dupes = (uid(n) for n in ("edge", "past", "ooo", "late", "dup"))
    for t in (0, 5, 10):  # span exactly fault_window_s: a storm
        feed.event(edge, "robot.fault", T0 + t)
    for t in (0, 5, 10.001):  # one millisecond too wide: none
        feed.event(past_edge, "robot.fault", T0 + t)
    feed.event(shuffled, "robot.heartbeat", T0 + 9)
    for t in (9, 5, 7):  # out of order, within allowed_lateness_s: counts
        feed.event(shuffled, "robot.fault", T0 + t)
    feed.event(late, "robot.heartbeat", T0 + 20)
    late_before = metric(sp, "stream_late_events_total") or 0
    for t in (0, 1, 2):  # more than allowed_lateness_s behind the robot's newest event
        feed.event(late, "robot.fault", T0 + t)
    wait_for(lambda: (metric(sp, "stream_late_events_total") or 0) >= late_before + 3, 5,
             "late faults counted")
    assert state(sp, late)[1]["faults_in_window"] == 0
    for t in (16, 17, 18):
        feed.event(late, "robot.fault", T0 + t)
    for _ in range(3):  # the vendor resent one event: counted once
        feed.event(dupes, "robot.fault", T0, ce_id="evt-dup-" + dupes)
    feed.event(dupes, "robot.fault", T0 + 1)

    def storms():
        return {(c["data"]["robot_id"], c["data"]["mode"], c["data"]["command_id"])
                for c in commands_for([edge, past_edge, shuffled, late, dupes], timeout=5)
                if c["data"]["reason"] == "fault_storm"}
    want = {(edge, "soft", f"sp-{edge}-fault_storm-{ms(T0 + 10)}"),
            (shuffled, "soft", f"sp-{shuffled}-fault_storm-{ms(T0 + 9)}"),
            (late, "soft", f"sp-{late}-fault_storm-{ms(T0 + 18)}")}
    wait_for(lambda: storms() == want, 8, "exactly the expected storms")
    assert state(sp, past_edge)[1]["faults_in_window"] == 2  # T0+5 and T0+10.001
    assert state(sp, dupes)[1]["faults_in_window"] == 2
    assert state(sp, edge)[1]["status"] == "rebooting"
    assert state(sp, edge)[1]["reboot_in_progress"] is True
    assert metric(sp, "stream_duplicate_events_total") >= 2
    # more faults while the reboot is in progress make no second request
    for t in (11, 12, 13):
        feed.event(edge, "robot.fault", T0 + t)
    time.sleep(1)
    all_edge = [c for c in commands_for([edge]) if c["data"]["reason"] == "fault_storm"]
    assert len(all_edge) == 1


def test_poison_message_goes_to_dlq_and_processing_continues(sp, feed):
    robot = uid("poison")
    feed.raw("robot.events.v1", robot, b"\xff not json {")
    no_time = {"specversion": "1.0", "id": "x1", "source": "/s", "type": "robot.heartbeat",
               "subject": robot, "data": {"robot_id": robot}}
    feed.raw("robot.events.v1", robot, json.dumps(no_time))
    feed.event(robot, "robot.heartbeat", time.time())
    wait_for(lambda: state(sp, robot)[0] == 200 and state(sp, robot)[1]["status"] == "online", 5,
             "the valid event after the poison ones")
    wait_for(lambda: len(read_topic(DLQ, {robot}, 3)) == 2, 8, "two dead letters")
    dl = [m["value"] for m in read_topic(DLQ, {robot})]
    assert all(d["type"] == "robot.event.poison" and d["subject"] == robot for d in dl)
    assert "time" in dl[1]["data"]["error"]
    assert dl[0]["data"]["payload_base64"] and dl[0]["data"]["topic"] == "robot.events.v1"
    status, body = state(sp, "nobody-" + robot)
    assert status == 404 and body["field"] == "robot_id"


def test_offline_after_changes_without_restart(exclusive, infra, tmp_path, feed):
    r = redis.Redis.from_url(infra["REDIS_URL"], decode_responses=True)
    r.delete("config:stream-processor:released")
    p = start_sp(tmp_path, infra, offline_after_s=60, env={"CONFIG_RESYNC_S": "1"})
    try:
        p.wait_ready()
        wait_assigned(p)
        robot = uid("cfg")
        feed.event(robot, "robot.heartbeat", time.time())
        wait_for(lambda: state(p, robot)[0] == 200, 5, "robot known")
        time.sleep(3)
        assert state(p, robot)[1]["status"] == "online"  # 60 s: not yet
        content = json.dumps({"stream": {"offline_after_s": 1}})
        r.hset("config:stream-processor:released", mapping={
            "version": 2, "content": content,
            "checksum": hashlib.sha256(content.encode()).hexdigest()})
        wait_for(lambda: state(p, robot)[1]["status"] == "offline", 6,
                 "offline after the released 1 s")
        wait_for(lambda: [c["data"]["reason"] for c in commands_for([robot], 3)] == ["offline"], 8,
                 "one offline request")
    finally:
        r.delete("config:stream-processor:released")
        assert p.stop() == 0


def script(prefix, feed, stop_evt=None):
    """A scripted stream: storms, silences and returns, about 8 s of wall time.
    Returns the expected (robot, reason, command id) triggers."""
    robots = [f"{prefix}-{i:02d}" for i in range(12)]
    expected = set()
    silent_from = {r: 6 + (i % 4) for i, r in enumerate(robots)}  # heartbeat rounds
    for rnd in range(14):
        now = T0 + 100 + rnd
        for i, rb in enumerate(robots):
            if rnd < silent_from[rb]:
                feed.event(rb, "robot.heartbeat", now, flush=False)
            if i % 2 == 0 and rnd in (2, 3, 4):
                feed.event(rb, "robot.fault", now + 0.5, flush=False)
        feed.p.flush(10)
        time.sleep(0.6)
    for i, rb in enumerate(robots):
        if i % 2 == 0:
            expected.add((rb, "fault_storm", f"sp-{rb}-fault_storm-{ms(T0 + 104.5)}"))
        else:
            last = silent_from[rb] - 1
            alive = T0 + 100 + last
            expected.add((rb, "offline", f"sp-{rb}-offline-{ms(alive)}"))
    return robots, expected


def triggers(robots):
    return [(c["data"]["robot_id"], c["data"]["reason"], c["data"]["command_id"])
            for c in commands_for(robots, timeout=10)]


def final_states(p, robots):
    out = {}
    for rb in robots:
        st = state(p, rb)[1]
        out[rb.rsplit("-", 1)[1]] = (st["status"], st["faults_in_window"], st["reboot_in_progress"],
                                    st["last_heartbeat_at"],
                                    (st["last_command_id"] or "").replace(rb, "R"))
    return out


def test_crash_consistency_under_kill_9(exclusive, infra, tmp_path, feed):
    # the clean run
    clean_pfx, crash_pfx = uid("clean"), uid("crash")
    p = start_sp(tmp_path, infra, name="clean")
    p.wait_ready()
    wait_assigned(p)
    robots, expected = script(clean_pfx, feed)
    wait_for(lambda: set(triggers(robots)) == expected, 20, "clean run triggers")
    clean = final_states(p, robots)
    assert p.stop() == 0

    # the same script while the processor is killed at random points
    instance, group = uid("crash"), uid("sp-crash")
    holder = {}

    def runner():
        holder["r"] = script(crash_pfx, feed)

    t = threading.Thread(target=runner)
    procs = [start_sp(tmp_path, infra, name="crash", group=group, instance=instance)]
    t.start()
    rnd = random.Random(7)
    for _ in range(5):
        time.sleep(rnd.uniform(0.3, 2.0))
        procs[-1].proc.send_signal(signal.SIGKILL)
        procs[-1].proc.wait()
        procs[-1].log.close()
        procs.append(start_sp(tmp_path, infra, name="crash", group=group, instance=instance))
    t.join()
    last = procs[-1]
    last.wait_ready()
    robots2, expected2 = holder["r"]
    wait_for(lambda: set(triggers(robots2)) == expected2, 60, "crash run triggers")
    wait_for(lambda: all(state(last, rb)[0] == 200 for rb in robots2), 30, "last owns all")
    time.sleep(3)
    got = triggers(robots2)
    assert sorted(got) == sorted(expected2), "each trigger exactly once under read_committed"
    crashed = final_states(last, robots2)
    assert crashed == clean
    assert last.stop() == 0


def test_rebalance_moves_state_between_two_instances(exclusive, infra, tmp_path, feed):
    group = uid("sp-pair")
    robots = [uid(f"pair{i:02d}") for i in range(16)]
    a = start_sp(tmp_path, infra, name="a", group=group, allowed_lateness_s=3600)
    a.wait_ready()
    wait_assigned(a)
    stop = threading.Event()
    silent = set(robots[8:12])

    def beat():
        while not stop.is_set():
            for rb in robots:
                if rb not in silent or not stop_silent.is_set():
                    feed.event(rb, "robot.heartbeat", time.time(), flush=False)
            feed.p.flush(10)
            time.sleep(0.4)

    stop_silent = threading.Event()
    th = threading.Thread(target=beat)
    th.start()
    try:
        base = time.time()
        for rb in robots[:8]:  # two faults each, seen by A
            feed.event(rb, "robot.fault", base + 1, flush=False)
            feed.event(rb, "robot.fault", base + 2, flush=False)
        feed.p.flush(10)
        wait_for(lambda: all(state(a, rb)[1].get("faults_in_window") == 2 for rb in robots[:8]),
                 10, "A counted two faults per robot")
        b = start_sp(tmp_path, infra, name="b", group=group, allowed_lateness_s=3600)
        b.wait_ready()
        wait_for(lambda: any("revoked" in r["message"] for r in a.log_records()), 30,
                 "A gave partitions away")
        wait_for(lambda: sum(state(b, rb)[0] == 200 for rb in robots) > 0, 20,
                 "B owns some robots")
        moved = [rb for rb in robots[:8] if state(b, rb)[0] == 200]
        for rb in moved:
            assert state(b, rb)[1]["faults_in_window"] == 2, "state followed via the changelog"
        for rb in robots[:8]:  # third fault: a storm wherever the robot now lives
            feed.event(rb, "robot.fault", base + 3, flush=False)
        feed.p.flush(10)
        stop_silent.set()  # robots[8:12] go silent: one offline request each
        time.sleep(1)
        assert a.stop() == 0  # everything moves to B
        wait_for(lambda: all(state(b, rb)[0] == 200 for rb in robots), 30, "B owns all")
        want = {(rb, "fault_storm") for rb in robots[:8]} | {(rb, "offline") for rb in silent}
        wait_for(lambda: {(r, why) for r, why, _ in triggers(robots)} == want, 20, "triggers")
        time.sleep(2)
        got = [(r, why) for r, why, _ in triggers(robots)]
        assert sorted(got) == sorted(want), "no trigger lost or doubled"
        assert moved, "the rebalance moved no robot with faults"
    finally:
        stop.set()
        th.join()
    assert b.stop() == 0

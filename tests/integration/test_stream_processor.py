"""stream-processor against real Apache Kafka and Redis: offline and fault-storm
rules, lateness, duplicates, poison messages, hot config, crash consistency
under kill -9, a rebalance between two instances, and waking the fetcher
behind a backlog larger than the prefetch queue."""

import hashlib
import json
import os
import random
import signal
import threading
import time
import uuid

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from conftest import wait_for
from sp_helpers import (DLQ, EVENTS, STATE, T0, Feed, commands_for, iso, kill_started, metric, ms,
                        read_topic, start_sp, state, wait_assigned)


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
    resumed = time.time()
    feed.event(robot, "robot.heartbeat", resumed)
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
    # only once the reboot is over may the robot, silent again, get a new request (new trigger)
    again = [x["id"] for x in commands_for([robot]) if x["id"] != c["id"]]
    assert again in ([], [f"sp-{robot}-offline-{ms(resumed)}"]), again
    assert metric(sp, "stream_timers_fired_total") >= 2
    assert metric(sp, "stream_reboot_requests_total", 'reason="offline"') >= 1
    assert v >= 4


def test_mirror_never_moves_a_newer_hash_back(sp, feed, infra):
    """One script call writes many robots: each keeps its own version guard. (Before the
    tests that leave the module's processor a backlog to read.)"""
    r = redis.Redis.from_url(infra["REDIS_URL"], decode_responses=True)
    ahead, behind = uid("ahead"), uid("behind")
    fresh = [uid("fresh") for _ in range(150)]  # more than one call's worth of robots
    r.hset(f"state:robot:{ahead}", mapping={"version": "1000000", "status": "faulted"})
    r.hset(f"state:robot:{behind}", mapping={"version": "0", "status": "faulted"})
    now = time.time()
    robots = [ahead, behind] + fresh
    for robot in robots:
        feed.event(robot, "robot.heartbeat", now, flush=robot == robots[-1])
    wait_for(lambda: all(r.hget(f"state:robot:{x}", "status") == "online" for x in fresh + [behind]),
             30, "mirror writes")
    assert r.hgetall(f"state:robot:{ahead}") == {"version": "1000000", "status": "faulted"}
    got = r.hgetall(f"state:robot:{behind}")
    assert int(got["version"]) == state(sp, behind)[1]["version"] and got["status"] == "online"
    assert set(got) == {"version", "status", "last_heartbeat_at", "updated_at", "offset",
                        "reboot_in_progress", "faults_in_window"}, got


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
    # heartbeats take a fast path: whatever it cannot vouch for still ends in the DLQ
    beat = {"specversion": "1.0", "id": "x2", "source": "/s", "type": "robot.heartbeat",
            "subject": robot, "time": "2026-11-22T10:00:00.000Z", "data": {"robot_id": robot}}
    feed.raw("robot.events.v1", robot, json.dumps(beat)[:-1])  # truncated
    feed.raw("robot.events.v1", robot, json.dumps(dict(beat, time="2026-13-01T00:00:00Z")))
    feed.raw("robot.events.v1", robot, json.dumps(beat) + " {}")  # trailing data
    feed.event(robot, "robot.heartbeat", time.time())
    wait_for(lambda: state(sp, robot)[0] == 200 and state(sp, robot)[1]["status"] == "online", 5,
             "the valid event after the poison ones")
    wait_for(lambda: len(read_topic(DLQ, {robot}, 3)) == 5, 8, "five dead letters")
    dl = [m["value"] for m in read_topic(DLQ, {robot})]
    assert all(d["type"] == "robot.event.poison" and d["subject"] == robot for d in dl)
    assert "time" in dl[1]["data"]["error"] and "time" in dl[3]["data"]["error"]
    assert "json" in dl[2]["data"]["error"] and "json" in dl[4]["data"]["error"]
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


def test_reboot_grace_expiry_updates_state_and_allows_new_request(exclusive, infra, tmp_path,
                                                                   feed):
    """reboot_grace_s running out is a timer of its own: without any input the
    derived state changes, robot.state.v1 says so, and the robot may be
    rebooted automatically again."""
    p = start_sp(tmp_path, infra, offline_after_s=2, reboot_grace_s=4)
    p.wait_ready()
    wait_assigned(p)
    silent, storm = uid("gr-off"), uid("gr-reb")
    r = redis.Redis.from_url(infra["REDIS_URL"], decode_responses=True)

    def states(robot):
        return [(m["value"]["data"]["status"], m["value"]["data"]["reboot_in_progress"])
                for m in read_topic(STATE, {robot}, 5) if m["value"]]

    def requests(robot):
        return [(c["data"]["reason"], c["data"]["mode"], c["id"]) for c in commands_for([robot], 5)]

    now = time.time()
    feed.event(silent, "robot.heartbeat", now)
    feed.event(storm, "robot.heartbeat", now)
    for i in range(3):  # a fault storm: soft request, rebooting; then nothing more from it
        feed.event(storm, "robot.fault", now + 0.1 * (i + 1))
    # silent: offline after 2 s with a hard request, the reboot in progress
    wait_for(lambda: ("offline", True) in states(silent), 10, "offline, reboot in progress")
    wait_for(lambda: [x[:2] for x in requests(storm)][:1] == [("fault_storm", "soft")], 5, "storm")
    # the storm robot's grace runs out while it is still "rebooting" and silent:
    # offline, and the offline rule may request again now
    wait_for(lambda: ("offline", True) in states(storm) and
             [x[:2] for x in requests(storm)] == [("fault_storm", "soft"), ("offline", "hard")],
             12, "rebooting -> offline with a new request after the grace")
    # the silent robot's grace runs out: no event, yet a state message ends the reboot
    wait_for(lambda: states(silent)[-1:] == [("offline", False)], 12, "grace over on the topic")
    assert states(silent) == [("online", False), ("offline", True), ("offline", False)]
    st = state(p, silent)[1]
    assert st["status"] == "offline" and st["reboot_in_progress"] is False
    wait_for(lambda: r.hget(f"state:robot:{silent}", "reboot_in_progress") == "0", 5, "mirror")
    assert len(requests(silent)) == 1
    # heard again, then silent again: a new automatic request (a new trigger)
    feed.event(silent, "robot.heartbeat", time.time())
    wait_for(lambda: len(requests(silent)) == 2, 10, "a second offline request")
    first, second = requests(silent)
    assert first[:2] == second[:2] == ("offline", "hard") and first[2] != second[2]
    assert metric(p, "stream_timers_fired_total") >= 4
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


def committed(group, parts):
    """The group's committed robot.events.v1 offsets of these partitions."""
    c = Consumer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"], "group.id": group,
                  "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(EVENTS, p) for p in sorted(parts)], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def kill9(p):
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait()
    p.log.close()


def test_heartbeat_checkpoints_hold_the_offset_and_replay_exactly(exclusive, infra, tmp_path,
                                                                   feed):
    """Changes made only by heartbeats and status reports (no derived state
    change) wait up to changelog_heartbeat_s for the changelog; the committed
    offset waits for them, so kill -9 loses nothing: the restart replays them
    (same heartbeat, same version); SIGTERM saves them."""
    group, instance = uid("sp-ckpt"), uid("ckpt")
    kw = dict(group=group, instance=instance, changelog_heartbeat_s=300, offline_after_s=60)
    p = start_sp(tmp_path, infra, name="ckpt", **kw)
    p.wait_ready()
    wait_assigned(p)
    robots = [uid(f"ckpt{i}") for i in range(6)]
    base = time.time()
    for k in range(3):  # the first makes the robot online (saved), the others only beat
        for rb in robots:
            if k == 1:  # an idle report of an online robot: no derived change either
                feed.event(rb, "robot.status", base + k - 0.5, data={"status": "idle"},
                           flush=False)
            feed.event(rb, "robot.heartbeat", base + k, flush=False)
        feed.p.flush(10)
        if k == 0:
            wait_for(lambda: all(state(p, rb)[1].get("status") == "online" for rb in robots), 10,
                     "robots online")
            time.sleep(0.5)  # that change committed: the next beats are heartbeats only
    want = {rb: iso(base + 2) for rb in robots}
    wait_for(lambda: {rb: state(p, rb)[1].get("last_heartbeat_at") for rb in robots} == want, 10,
             "the last heartbeats applied")
    versions = {rb: state(p, rb)[1]["version"] for rb in robots}
    time.sleep(1)  # several commits
    msgs = read_topic(EVENTS, set(robots))
    second = {}  # by partition: offset of the earliest status report (before the 2nd beat)
    for m in msgs:
        if m["value"]["time"] == iso(base + 0.5):
            second[m["partition"]] = min(second.get(m["partition"], 1 << 62), m["offset"])
    held = committed(group, second)
    assert all(0 <= held[q] <= second[q] for q in second), (held, second)
    kill9(p)

    p2 = start_sp(tmp_path, infra, name="ckpt", **kw)
    p2.wait_ready()
    wait_assigned(p2)
    wait_for(lambda: all(state(p2, rb)[0] == 200 for rb in robots), 20, "robots back")
    wait_for(lambda: {rb: state(p2, rb)[1].get("last_heartbeat_at") for rb in robots} == want, 20,
             "the unsaved heartbeats replayed")
    assert {rb: state(p2, rb)[1]["version"] for rb in robots} == versions
    assert p2.stop() == 0  # SIGTERM: the unsaved heartbeats go to the changelog
    last = {}
    for m in msgs:
        last[m["partition"]] = max(last.get(m["partition"], -1), m["offset"])
    after = committed(group, last)
    assert all(after[q] > last[q] for q in last), (after, last)


def test_replay_after_kill_9_neither_resends_dead_letters_nor_revives_deleted_robots(
        exclusive, infra, tmp_path, feed):
    group, instance = uid("sp-rp"), uid("rp")
    kw = dict(group=group, instance=instance, changelog_heartbeat_s=300, offline_after_s=60)
    p = start_sp(tmp_path, infra, name="rp", **kw)
    p.wait_ready()
    wait_assigned(p)
    gone, poison, beat = uid("gone"), uid("poison"), uid("beat")
    # robots whose unsaved heartbeats come before gone's in its partition (most likely one
    # shares it): without the flush at the deletion, a replay would pass gone's second beat
    others = [uid(f"hold{i}") for i in range(24)]
    base = time.time()
    for k in range(2):
        for rb in (*others, beat, gone):
            feed.event(rb, "robot.heartbeat", base + k, flush=False)
        feed.p.flush(10)
        if k == 0:
            wait_for(lambda: state(p, gone)[0] == 200, 10, "robot known")
            time.sleep(0.5)
    deleted = {"specversion": "1.0", "id": "del_" + uuid.uuid4().hex, "source": "/robot-registry",
               "type": "robot.deleted", "subject": gone, "time": iso(time.time()),
               "datacontenttype": "application/json", "data": {"id": gone}}
    feed.raw("robot.registry.v1", gone, json.dumps(deleted))
    feed.raw("robot.events.v1", poison, b"\xff not json {")
    feed.event(beat, "robot.heartbeat", base + 2)
    wait_for(lambda: state(p, gone)[0] == 404, 10, "robot deleted")
    wait_for(lambda: len(read_topic(DLQ, {poison}, 3)) == 1, 10, "one dead letter")
    wait_for(lambda: state(p, beat)[1].get("last_heartbeat_at") == iso(base + 2), 10, "beats")
    time.sleep(1)
    kill9(p)

    p2 = start_sp(tmp_path, infra, name="rp", **kw)
    p2.wait_ready()
    wait_assigned(p2)
    wait_for(lambda: state(p2, beat)[0] == 200 and
             state(p2, beat)[1].get("last_heartbeat_at") == iso(base + 2), 20, "replayed")
    time.sleep(2)
    assert state(p2, gone)[0] == 404, "a replayed heartbeat brought a deleted robot back"
    assert len(read_topic(DLQ, {poison}, 3)) == 1, "the dead letter was sent again"
    assert p2.stop() == 0


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


def fast_feed():
    """A Feed whose producer reconnects quickly after a broker restart (librdkafka
    backs off up to 10 s by default) and never blocks on a broker that is away."""
    return Feed({"reconnect.backoff.max.ms": 500})


def heartbeats(feed, robots, stop, period=0.4):
    """A thread: every robot of `robots` (a set the test may change) heartbeats each period."""
    def run():
        while not stop.is_set():
            for rb in list(robots):
                feed.event(rb, "robot.heartbeat", time.time(), flush=False)
            feed.p.poll(0)
            time.sleep(period)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def requests_by_robot(robots, timeout=8):
    out = {}
    for c in commands_for(robots, timeout):
        out.setdefault(c["data"]["robot_id"], []).append((c["data"]["reason"], c["data"]["command_id"]))
    return out


def test_broker_restart_beyond_txn_timeout_recovers_in_process(exclusive, infra, tmp_path,
                                                               private_kafka, monkeypatch):
    """The broker away longer than transaction.timeout.ms (10 s) while
    transactions run: the broker expires the open one, and librdkafka raises a
    fatal error when the abort is retried: INVALID_TXN_STATE, or a fence (the
    coordinator bumped the epoch of the expired transaction), depending on
    timing. The processor replaces its producer in-process: same pid, ready again,
    events produced after the restart processed, and exactly one request per
    scripted trigger (none for the robots that kept heartbeating)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", private_kafka.bootstrap)
    feed = fast_feed()
    p = start_sp(tmp_path, infra, name="bk", offline_after_s=5)
    p.wait_ready(90)
    wait_assigned(p, 60)
    pid = p.proc.pid
    alive = {uid("bk-alive") for _ in range(12)}
    before, after = uid("bk-before"), uid("bk-after")
    stop = threading.Event()
    th = heartbeats(feed, alive, stop)
    try:
        feed.event(before, "robot.heartbeat", time.time())  # then silent: offline before the outage
        wait_for(lambda: all(state(p, rb)[0] == 200 for rb in alive), 20, "alive robots known")
        wait_for(lambda: requests_by_robot([before], 3).get(before), 20, "offline before the outage")
        assert state(p, before)[1]["status"] == "offline"
        aborts_before = metric(p, "stream_txn_aborts_total") or 0
        private_kafka.stop()
        down = time.monotonic()
        wait_for(lambda: p.readyz()[0] == 503, 30, "not ready without the broker")
        time.sleep(max(0.0, 14 - (time.monotonic() - down)))  # > transaction.timeout.ms
        assert p.proc.poll() is None, p.output()[-3000:]
        private_kafka.start()
        p.wait_ready(90)
        # a robot first heard after the restart, then silent: one offline request
        feed.event(after, "robot.heartbeat", time.time())
        wait_for(lambda: state(p, after)[0] == 200, 60, "an event produced after the restart processed")
        wait_for(lambda: requests_by_robot([after], 3).get(after), 30, "offline after the restart")
        time.sleep(6)  # more than offline_after_s: nothing more may come
        got = requests_by_robot(alive | {before, after}, 10)
        assert set(got) == {before, after}, {r: v for r, v in got.items() if r not in (before, after)}
        assert len(got[before]) == 1 and len(got[after]) == 1, got
        assert all(got[rb][0][0] == "offline" for rb in (before, after)), got
        assert all(state(p, rb)[1]["status"] == "online" for rb in alive)
        assert p.proc.pid == pid and p.proc.poll() is None, p.output()[-3000:]
        assert (metric(p, "stream_txn_aborts_total") or 0) >= aborts_before
    finally:
        stop.set()
        th.join()
    records = p.log_records()
    assert not any("is fenced" in r["message"] for r in records)
    assert p.stop() == 0, p.output()[-3000:]


def test_second_instance_with_the_same_id_fences_the_first(exclusive, infra, tmp_path, feed):
    """Two processes given one instance id share a transactional id: the second
    one's init_transactions fences the first, whose next (young) transaction
    fails with a fence. That is no expired transaction to recover from: the
    first exits non-zero (for its supervisor or an operator), the second takes
    its partitions over and goes on."""
    group, inst = uid("sp-fence"), uid("fence")
    a = start_sp(tmp_path, infra, name="fa", group=group, instance=inst)
    a.wait_ready(90)
    wait_assigned(a, 60)
    robots = {uid("fence-r") for _ in range(12)}
    stop = threading.Event()
    th = heartbeats(feed, robots, stop, period=0.2)
    try:
        wait_for(lambda: all(state(a, rb)[0] == 200 for rb in robots), 20, "robots known")
        b = start_sp(tmp_path, infra, name="fb", group=group, instance=inst)
        b.wait_ready(90)
        wait_for(lambda: a.proc.poll() is not None, 60, "the fenced instance exits")
        assert a.proc.returncode != 0, a.output()[-3000:]
        assert any("the producer is fenced, exiting" in r["message"] for r in a.log_records())
        assert not any("coordinator expired it" in r["message"] for r in a.log_records())
        wait_for(lambda: all(state(b, rb)[0] == 200 and state(b, rb)[1]["status"] == "online"
                             for rb in robots), 60, "every robot online at the second instance")
        assert b.proc.poll() is None, b.output()[-3000:]
    finally:
        stop.set()
        th.join()
    assert b.stop() == 0, b.output()[-3000:]


def test_backlog_defers_offline_verdicts_until_caught_up(exclusive, infra, tmp_path, private_kafka,
                                                         monkeypatch):
    """Offline verdicts wait until the robot's partition has caught up. The
    processor is stopped while robots keep heartbeating (longer than
    offline_after_s) behind a large backlog of other robots' events; the new
    instance restores, and catching up (one transaction per 20 events) takes
    longer than offline_after_s (every heartbeat written to the changelog). No request for a robot whose heartbeats are in
    the backlog; exactly one for the robot that really stopped. (A broker of
    its own: the backlog stays out of the shared topic.)"""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", private_kafka.bootstrap)
    feed = fast_feed()
    group, instance = uid("sp-backlog"), uid("backlog")
    settings = dict(group=group, instance=instance, offline_after_s=1)
    alive = {uid("bl-alive") for _ in range(20)}
    dead = uid("bl-dead")
    filler = [uid("bl-fill") for _ in range(60)]
    a = start_sp(tmp_path, infra, name="bl-a", **settings)
    a.wait_ready(90)
    wait_assigned(a, 60)
    stop = threading.Event()
    th = None
    try:
        for rb in alive | {dead}:
            feed.event(rb, "robot.heartbeat", time.time(), flush=False)
        feed.p.flush(10)
        wait_for(lambda: all(state(a, rb)[0] == 200 for rb in alive | {dead}), 15, "robots known")
        assert a.stop() == 0
        # the backlog: first the filler robots' heartbeats, then the alive robots keep
        # heartbeating (dead does not) for longer than offline_after_s
        t = time.time()
        for rnd in range(100):
            for rb in filler:
                feed.event(rb, "robot.heartbeat", t + rnd * 0.001, flush=False)
            feed.p.poll(0)
        feed.p.flush(30)
        th = heartbeats(feed, alive, stop, period=0.25)
        time.sleep(3)
        # every heartbeat to the changelog (no checkpoints): catching up stays slow
        b = start_sp(tmp_path, infra, name="bl-b", cycle_max_events=20, changelog_heartbeat_s=0,
                     **settings)
        b.wait_ready()
        wait_assigned(b)
        wait_for(lambda: requests_by_robot([dead], 3).get(dead), 60, "the dead robot's request")
        wait_for(lambda: all(state(b, rb)[1]["status"] == "online" for rb in alive), 60,
                 "every alive robot online after the backlog")
        time.sleep(3)
        got = requests_by_robot(alive | {dead}, 10)
        assert set(got) == {dead}, f"requests for robots alive in the backlog: {sorted(set(got) - {dead})}"
        assert len(got[dead]) == 1 and got[dead][0][0] == "offline", got
        assert (metric(b, "stream_timers_deferred_total") or 0) > 0, "no deadline waited for a backlog"
    finally:
        stop.set()
        if th is not None:
            th.join()
    assert b.stop() == 0


def test_backlog_beyond_the_prefetch_queue_wakes_the_fetcher(exclusive, infra, tmp_path,
                                                              private_kafka, monkeypatch):
    """librdkafka 2.0 stops fetching while its prefetch queue is full and looks
    again only when its broker thread wakes, up to a second later; the
    processor wakes it (a ListOffsets request) when the queue runs low. With a
    1 KiB queue and fetches of ~8 KiB per partition, 3,000 events in small
    record batches need many fetches: they are all read, and the fetcher was
    woken. (A broker of its own: the restore reads the changelog with the same
    small fetches, and the shared one holds every other test's records.)"""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", private_kafka.bootstrap)
    p = start_sp(tmp_path, infra, name="wake", offline_after_s=3600,
                 kafka={"queued.max.messages.kbytes": 1, "max.partition.fetch.bytes": 8192})
    try:
        p.wait_ready(90)
        wait_assigned(p, 60)
        small = Feed({"batch.size": 2048, "linger.ms": 0})  # small record batches
        robots = [uid("wake") for _ in range(30)]
        base = time.time()
        for k in range(100):
            for rb in robots:
                small.event(rb, "robot.heartbeat", base + k * 0.01, flush=False)
            small.p.poll(0)
        assert small.p.flush(30) == 0 and not small.failed, small.failed[:3]
        want = iso(base + 0.99)
        wait_for(lambda: all(state(p, rb)[1].get("last_heartbeat_at") == want for rb in robots),
                 120, "every robot's last heartbeat applied")
        assert (metric(p, "stream_fetch_wakes_total") or 0) > 0, "the fetcher was never woken"
    finally:
        assert p.stop() == 0

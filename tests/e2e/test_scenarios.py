"""End-to-end scenarios of the whole platform, all real: the five services, the
robot simulator (the vendor) registered through robot-registry, Apache Kafka and
Redis.

1. Fault storms on one robot: each storm is a soft reboot request (reason
   fault_storm); reboot-command dispatches the first, refuses one inside the
   cooldown (rejected, rule cooldown) and stops after the daily cap (rejected,
   rule daily_cap).
2. 30 % of a fleet goes silent at once: the fleet-wide cap holds (never more than
   `fleet_max_concurrent` rebooting), the rest wait queued and are released in
   order, every robot is rebooted exactly once and comes back.
3. Operator reboots through the API: the same Idempotency-Key twice is one
   command and one dispatch at the vendor; a reboot scheduled with `at` and
   cancelled before it fires is never dispatched.
4. Config released through config-center while everything runs: a lower
   stream.offline_after_s and a higher reboot.fleet_max_concurrent are applied
   without restarts (/metrics config_version, a silent robot is rebooted after
   the new threshold, three robots reboot at once instead of one).

Scenarios 1-3 share one platform (class-scoped fixture); scenario 4 changes the
configuration of its own. Each platform runs on a Redis database of its own
(private_redis_url): released namespaces, fleet slots, the reboot queue and the
cooldown / daily counters never leak into other tests, nor theirs into these.
Every scenario has its own simulator and robot-id prefix."""

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest
import yaml

from e2e_support import (ROOT, TERMINAL_STATES, EventCounter, ServiceFactory, Sim, StatusReader, commands_sent,
                         max_rebooting, metric_value, private_redis_url, rebooting_intervals, register_fleet,
                         release_config, resume_automation, start_platform, ts, wait_for)
from report import REPORT

SHARED_REDIS_DB = 14   # scenarios 1-3
CONFIG_REDIS_DB = 15   # scenario 4

OFFLINE_AFTER_S = 4
COOLDOWN_S = 8
DAILY_CAP = 2
FLEET_CAP = 2
FAULT_THRESHOLD = 3
FAULT_WINDOW_S = 3
OPERATOR = {"X-Consumer-Username": "e2e-operator"}
DEADLINE_S = 60
# the simulator's own API (proto/openapi/robot-sim.yaml): every /sim/stats answer is checked against it
SIM_API = yaml.safe_load((ROOT / "proto" / "openapi" / "robot-sim.yaml").read_text())
SIM_STATS = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/Stats",
                                             "components": SIM_API["components"]})


def unique_prefix(tag):
    return f"{tag}{uuid.uuid4().hex[:6]}-"


def states_of(trans):
    return [d["state"] for d in trans]


def command_doc(reboot, cid):
    s, _, b = reboot.get(f"/v1/commands/{cid}")
    assert s == 200, b
    return json.loads(b)


def sp_status(sp, rid):
    s, _, b = sp.get(f"/v1/state/{rid}")
    return json.loads(b)["status"] if s == 200 else None


def drained_commands(statuses, rid):
    statuses.drain(0.3)
    return statuses.commands(rid)


def all_succeeded(statuses, robots):
    """Every robot has a command on robot.command-status.v1 and all its commands ended succeeded."""
    statuses.drain(0.3)
    for rid in robots:
        cmds = statuses.commands(rid)
        if not cmds or any(states_of(t)[-1] != "succeeded" for t in cmds.values()):
            return False
    return True


def event_figures(sim, events):
    st = sim.stats()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in SIM_STATS.iter_errors(st)]
    assert not errors, f"/sim/stats against robot-sim.yaml: {errors}"
    ids, _ = events.count(sim.prefix)
    accepted = st["events_accepted"]
    assert len(ids) >= accepted, f"{accepted} events got 202, {len(ids)} distinct ids in Kafka"
    return st, dict(events_sent=sum(st["events"].values()), events_accepted=accepted, events_in_kafka=len(ids),
                    duplicates=sum(n - 1 for n in ids.values()), losses=max(0, accepted - len(ids)))


class Platform:
    def __init__(self, svc, bootstrap):
        self.svc = svc
        self.bootstrap = bootstrap
        self.registry = svc["robot-registry"]
        self.reboot = svc["reboot-command"]
        self.sp = svc["stream-processor"]
        self.center = svc["config-center"]


@pytest.fixture(scope="class")
def platform(infra, tmp_path_factory):
    """The five services, shared by the scenarios of the class, with small policy values."""
    workdir = tmp_path_factory.mktemp("e2e-shared")
    factory = ServiceFactory(workdir)
    try:
        svc = start_platform(
            factory, workdir,
            sp_config={"stream.offline_after_s": OFFLINE_AFTER_S, "stream.fault_threshold": FAULT_THRESHOLD,
                       "stream.fault_window_s": FAULT_WINDOW_S},
            reboot_config={"reboot.cooldown_s": COOLDOWN_S, "reboot.max_per_robot_per_day": DAILY_CAP,
                           "reboot.fleet_max_concurrent": FLEET_CAP, "reboot.schedule_poll_ms": 100},
            env={"REDIS_URL": private_redis_url(infra, SHARED_REDIS_DB)})
        resume_automation(svc["reboot-command"])
        yield Platform(svc, infra["KAFKA_BOOTSTRAP_SERVERS"])
        for name, p in svc.items():
            assert p.stop() == 0, f"{name} exit status, log: {p.output()[-2000:]}"
    finally:
        factory.close()


class TestSharedPlatform:
    # ---- 1 ---------------------------------------------------------------------------
    STORM_AT = (7, 13, 19, 25, 31, 37)  # s after the simulator's start, fleet a = robot 1 only

    def test_fault_storms_soft_reboot_within_cooldown_and_daily_cap(self, platform, tmp_path):
        storms = [a for t in self.STORM_AT for a in ("--storm", f"a@{t}:{FAULT_THRESHOLD}/1")]
        sim = Sim(tmp_path, unique_prefix("es1"), 2, fleets=2, args=storms + ["--reboot-ms", "1000"])
        statuses = StatusReader(platform.bootstrap)
        events = EventCounter(platform.bootstrap)
        try:
            target, control = sim.rid(1), sim.rid(2)
            register_fleet(platform.registry, sim)
            registered_after = time.time() - sim.started
            assert registered_after < self.STORM_AT[0] - 1, f"registration took {registered_after:.1f}s"
            last_storm = sim.started + self.STORM_AT[-1]

            # every storm has fired and the last one's request has been decided
            def last_decided():
                cmds = drained_commands(statuses, target)
                ends = [t for t in cmds.values() if states_of(t)[-1] in TERMINAL_STATES]
                return len(ends) == len(cmds) and any(ts(t[-1]["at"]) > last_storm for t in ends)
            wait_for(last_decided, self.STORM_AT[-1] + DEADLINE_S, "a decision on the last storm's request")
            time.sleep(2)  # nothing more comes
            cmds = drained_commands(statuses, target)

            decisions = []  # (time, command id, outcome) in time order
            for cid, trans in cmds.items():
                states = states_of(trans)
                assert all(d["reason"] == "fault_storm" and d["mode"] == "soft" and d["origin"] == "automatic"
                           for d in trans), trans
                if "rejected" in states:
                    assert states == ["requested", "rejected"], states
                    hist = command_doc(platform.reboot, cid)["history"]
                    assert hist[-1]["state"] == "rejected", hist
                    rule = hist[-1]["rule"]
                    assert {"cooldown": f"cooldown is {COOLDOWN_S}s", "daily_cap": f"the cap is {DAILY_CAP}"}.get(
                        rule, rule) in trans[-1]["detail"], (rule, trans[-1])
                    decisions.append((ts(trans[-1]["at"]), cid, rule))
                else:
                    assert states[:2] == ["requested", "queued"] and states[-1] == "succeeded", states
                    assert states.count("dispatched") == 1 and states.count("succeeded") == 1, states
                    dispatched = next(d for d in trans if d["state"] == "dispatched")
                    decisions.append((ts(dispatched["at"]), cid, "dispatched"))
            decisions.sort()
            outcomes = [o for _, _, o in decisions]
            assert outcomes[0] == "dispatched", outcomes
            assert outcomes.count("dispatched") == DAILY_CAP, outcomes
            assert "cooldown" in outcomes and "daily_cap" in outcomes, outcomes
            assert set(outcomes) <= {"dispatched", "cooldown", "daily_cap"}, outcomes
            # each decision is the rule's answer at its time (0.5 s: the transition is
            # stamped a little after the check)
            done = []
            for at, cid, outcome in decisions:
                since_last = at - done[-1] if done else float("inf")
                if outcome == "dispatched":
                    assert since_last >= COOLDOWN_S - 0.5 and len(done) < DAILY_CAP, (cid, since_last, outcomes)
                    done.append(at)
                elif outcome == "cooldown":
                    assert since_last < COOLDOWN_S + 0.5, (cid, since_last, outcomes)
                else:
                    assert since_last >= COOLDOWN_S - 0.5 and len(done) >= DAILY_CAP, (cid, since_last, outcomes)

            st, figures = event_figures(sim, events)
            sent = commands_sent(st)
            assert set(sent) == {target}, f"commands reached other robots: {sent}"
            assert sent[target] == {"soft": DAILY_CAP, "hard": 0}, sent
            assert st["commands"]["duplicates_suppressed"] == 0, st["commands"]
            assert control not in statuses.by_robot
            assert st["events"]["robot.fault"] >= FAULT_THRESHOLD * len(decisions), st["events"]
            rebooted = outcomes.count("dispatched")  # each of them asserted succeeded above
            REPORT.add("fault storms, cooldown and daily cap", commands_triggered=len(cmds),
                       commands_dispatched=rebooted, commands_succeeded=rebooted, **figures)
            print(f"\nstorm decisions: {outcomes}")
        finally:
            statuses.close()
            events.close()
            sim.stop()

    # ---- 2 ---------------------------------------------------------------------------
    FLEET_ROBOTS = 20
    SILENT = (3, 6, 9, 12, 15, 18)  # 30 % of the fleet
    SILENT_AT_S = 6

    def test_fleet_cap_when_30_percent_go_silent_at_once(self, platform, tmp_path):
        silent_args = [a for r in self.SILENT for a in ("--silent", f"{r}@{self.SILENT_AT_S}")]
        sim = Sim(tmp_path, unique_prefix("es2"), self.FLEET_ROBOTS, fleets=1, args=silent_args)
        statuses = StatusReader(platform.bootstrap)
        events = EventCounter(platform.bootstrap)
        try:
            register_fleet(platform.registry, sim)
            registered_after = time.time() - sim.started
            assert registered_after < self.SILENT_AT_S - 1, f"registration took {registered_after:.1f}s"
            silent = [sim.rid(r) for r in self.SILENT]
            silent_at = sim.started + self.SILENT_AT_S
            sim_peak = [0]

            def done():
                sim_peak[0] = max(sim_peak[0], sim.stats()["rebooting_count"])
                return all_succeeded(statuses, silent)
            wait_for(done, self.SILENT_AT_S + OFFLINE_AFTER_S + 3 * DEADLINE_S,
                     "every silent robot's reboot succeeded")
            wait_for(lambda: all(sp_status(platform.sp, r) == "online" for r in silent), DEADLINE_S,
                     "the silent robots online again")
            time.sleep(2)  # nothing more comes
            statuses.drain(1.0)

            intervals = rebooting_intervals(statuses, silent)
            assert sorted(r for _, r, _, _ in intervals) == sorted(silent), intervals
            assert all(end is not None for *_, end in intervals), intervals
            peak = max_rebooting(intervals)
            assert peak == FLEET_CAP, f"{peak} robots rebooting at once, fleet cap {FLEET_CAP}"
            assert sim_peak[0] <= FLEET_CAP, f"the simulator saw {sim_peak[0]} robots rebooting at once"
            waited, latencies = [], []
            for rid in silent:
                (cid, trans), = statuses.commands(rid).items()
                states = states_of(trans)
                assert states[:2] == ["requested", "queued"] and states[-1] == "succeeded", states
                assert states.count("dispatched") == 1 and states.count("succeeded") == 1, states
                assert all(d["reason"] == "offline" and d["mode"] == "hard" for d in trans), trans
                queued = trans[1]
                dispatched = next(d for d in trans if d["state"] == "dispatched")
                latencies.append(ts(dispatched["at"]) - silent_at)
                q, d = ts(queued["at"]), ts(dispatched["at"])
                if d - q > 1.0:  # waited for a slot: until another robot's reboot (2 s) ended
                    waited.append((q, d, cid))
            assert len(waited) >= len(silent) - FLEET_CAP, waited
            # released in the order they queued (admissions within 50 ms of each other ran
            # concurrently on different lanes: their order is not observable here). Slots that
            # free together release several commands in one step, in queue order, and their
            # lanes stamp "dispatched" concurrently: within 50 ms is a tie, not an inversion.
            for i, (q1, d1, c1) in enumerate(sorted(waited)):
                for q2, d2, c2 in sorted(waited)[i + 1:]:
                    if q2 - q1 > 0.05:
                        assert d1 <= d2 + 0.05, f"{c2} queued after {c1} but dispatched first"

            st, figures = event_figures(sim, events)
            sent = commands_sent(st)
            assert set(sent) == set(silent), f"commands: {sent}"
            assert all(c == {"soft": 0, "hard": 1} for c in sent.values()), sent
            assert st["commands"]["duplicates_suppressed"] == 0, st["commands"]
            others = {r for r in statuses.by_robot if r.startswith(sim.prefix) and r not in silent}
            assert not others, f"command status for robots that never went silent: {others}"
            REPORT.add("fleet cap, 30 % silent", commands_triggered=len(intervals),
                       commands_dispatched=len(intervals), commands_succeeded=len(intervals),
                       silent_to_dispatch_s=latencies, **figures)
            print(f"\nfleet cap: peak {peak} rebooting, {len(waited)} waited, "
                  f"silent->dispatched {min(latencies):.1f}..{max(latencies):.1f}s")
        finally:
            statuses.close()
            events.close()
            sim.stop()

    # ---- 3 ---------------------------------------------------------------------------
    def test_operator_reboot_idempotency_key_and_cancel_before_dispatch(self, platform, tmp_path):
        sim = Sim(tmp_path, unique_prefix("es3"), 3, fleets=1)
        statuses = StatusReader(platform.bootstrap)
        events = EventCounter(platform.bootstrap)
        reboot = platform.reboot
        try:
            register_fleet(platform.registry, sim)
            r1, r2 = sim.rid(1), sim.rid(2)
            key = "e2e-" + uuid.uuid4().hex
            body = json.dumps({"mode": "soft", "reason": "e2e operator request"}).encode()
            h = dict(OPERATOR, **{"Content-Type": "application/json", "Idempotency-Key": key})

            s, _, b = reboot.request("POST", f"/v1/robots/{r1}/reboot", body=body, headers=h)
            assert s == 202, b
            cid = json.loads(b)["command_id"]
            s, _, b = reboot.request("POST", f"/v1/robots/{r1}/reboot", body=body, headers=h)
            assert s == 200 and json.loads(b)["command_id"] == cid, (s, b)
            wait_for(lambda: command_doc(reboot, cid)["state"] == "succeeded", DEADLINE_S, f"{cid} succeeded")
            s, _, b = reboot.request("POST", f"/v1/robots/{r1}/reboot", body=body, headers=h)
            assert s == 200 and json.loads(b)["command_id"] == cid, (s, b)
            doc = command_doc(reboot, cid)
            hist = [e["state"] for e in doc["history"]]
            assert hist[0] == "requested" and hist[-1] == "succeeded" and hist.count("dispatched") == 1, hist
            assert doc["requested_by"] == OPERATOR["X-Consumer-Username"] and doc["origin"] == "api", doc
            s, _, b = reboot.request("POST", f"/v1/commands/{cid}/cancel", headers=OPERATOR)
            assert s == 409, (s, b)

            # scheduled a few seconds ahead and cancelled before it fires
            at = datetime.now(timezone.utc) + timedelta(seconds=8)
            at_iso = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            body2 = json.dumps({"mode": "soft", "reason": "e2e scheduled", "at": at_iso}).encode()
            h2 = dict(OPERATOR, **{"Content-Type": "application/json", "Idempotency-Key": key + "-at"})
            s, _, b = reboot.request("POST", f"/v1/robots/{r2}/reboot", body=body2, headers=h2)
            assert s == 202, b
            cid2 = json.loads(b)["command_id"]
            wait_for(lambda: command_doc(reboot, cid2)["state"] == "scheduled", 20, f"{cid2} scheduled")
            s, _, b = reboot.request("POST", f"/v1/commands/{cid2}/cancel", headers=OPERATOR)
            assert s == 200 and json.loads(b)["state"] == "cancelled", (s, b)
            assert time.time() < at.timestamp(), "cancelled only after the fire time: too slow to judge"
            # past the fire time (and a few scheduler polls): still cancelled, never dispatched
            wait_for(lambda: time.time() > at.timestamp() + 3, 30, "the fire time passed")
            doc2 = command_doc(reboot, cid2)
            hist2 = [e["state"] for e in doc2["history"]]
            assert hist2 == ["requested", "scheduled", "cancelled"], hist2
            assert doc2["history"][-1]["actor"] == OPERATOR["X-Consumer-Username"], doc2["history"]

            statuses.drain(1.0)
            (c1, t1), = statuses.commands(r1).items()
            assert c1 == cid and states_of(t1)[-1] == "succeeded", states_of(t1)
            assert all(states_of(t1).count(x) == 1 for x in set(states_of(t1))), states_of(t1)
            assert all(d["operator"] == OPERATOR["X-Consumer-Username"] for d in t1), t1
            (c2, t2), = statuses.commands(r2).items()
            assert c2 == cid2 and states_of(t2) == ["requested", "scheduled", "cancelled"], states_of(t2)

            st, figures = event_figures(sim, events)
            assert commands_sent(st) == {r1: {"soft": 1, "hard": 0}}, commands_sent(st)
            assert st["commands"]["received"] == 1 and st["commands"]["duplicates_suppressed"] == 0, st["commands"]
            REPORT.add("operator reboot, idempotency and cancel", commands_triggered=2, commands_dispatched=1,
                       commands_succeeded=1, **figures)
        finally:
            statuses.close()
            events.close()
            sim.stop()


# ---- 4 -------------------------------------------------------------------------------
OLD_OFFLINE_S, NEW_OFFLINE_S = 30, 3
OLD_CAP, NEW_CAP = 1, 3


def test_config_release_applies_without_restart(service, infra, tmp_path):
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    svc = start_platform(service, tmp_path, sp_config={"stream.offline_after_s": OLD_OFFLINE_S},
                         reboot_config={"reboot.cooldown_s": 0, "reboot.fleet_max_concurrent": OLD_CAP},
                         env={"REDIS_URL": private_redis_url(infra, CONFIG_REDIS_DB), "CONFIG_RESYNC_S": "30"})
    registry, reboot, sp, center = (svc[n] for n in ("robot-registry", "reboot-command", "stream-processor",
                                                      "config-center"))
    resume_automation(reboot)
    pids = {n: p.proc.pid for n, p in svc.items()}
    statuses = StatusReader(bootstrap)
    events = EventCounter(bootstrap)
    sims = []
    try:
        assert metric_value(sp, "config_version", 'namespace="stream-processor"') == 0
        assert metric_value(reboot, "config_version", 'namespace="reboot-command"') == 0

        # before: fleet cap 1, two operator reboots go one after the other
        before = Sim(tmp_path, unique_prefix("es4a"), 2, fleets=1)
        sims.append(before)
        register_fleet(registry, before)
        for rid in (before.rid(1), before.rid(2)):
            s, _, b = reboot.request("POST", f"/v1/robots/{rid}/reboot",
                                     body=json.dumps({"mode": "soft", "reason": "e2e before"}).encode(),
                                     headers=dict(OPERATOR, **{"Content-Type": "application/json"}))
            assert s == 202, b
        wait_for(lambda: all_succeeded(statuses, [before.rid(1), before.rid(2)]), 2 * DEADLINE_S,
                 "both operator reboots succeeded")
        first, second = sorted(rebooting_intervals(statuses, [before.rid(1), before.rid(2)]), key=lambda i: i[2])
        queued_second = next(ts(d["at"]) for d in statuses.commands(second[1])[second[0]] if d["state"] == "queued")
        # the second was queued while the first rebooted and dispatched once it ended
        assert queued_second < first[3] <= second[2], (first, second, queued_second)

        # the release, through config-center, while everything runs
        v_sp = release_config(center, "stream-processor", f"stream:\n  offline_after_s: {NEW_OFFLINE_S}\n")
        v_rc = release_config(center, "reboot-command", f"reboot:\n  fleet_max_concurrent: {NEW_CAP}\n")
        wait_for(lambda: metric_value(sp, "config_version", 'namespace="stream-processor"') == v_sp, 20,
                 f"stream-processor applies stream-processor v{v_sp}")
        wait_for(lambda: metric_value(reboot, "config_version", 'namespace="reboot-command"') == v_rc, 20,
                 f"reboot-command applies reboot-command v{v_rc}")
        assert metric_value(sp, "config_reloads_total", 'namespace="stream-processor",outcome="applied"') >= 1
        assert metric_value(reboot, "config_reloads_total", 'namespace="reboot-command",outcome="applied"') >= 1
        applied_at = time.time()

        # after: four robots of a new fleet go silent at once
        silent_at_s = 6
        after = Sim(tmp_path, unique_prefix("es4b"), 8, fleets=1,
                    args=[a for r in (1, 2, 3, 4) for a in ("--silent", f"{r}@{silent_at_s}")])
        sims.append(after)
        register_fleet(registry, after)
        assert time.time() - after.started < silent_at_s - 1, "registration too slow"
        silent = [after.rid(r) for r in (1, 2, 3, 4)]
        silent_at = after.started + silent_at_s
        assert silent_at > applied_at
        wait_for(lambda: all_succeeded(statuses, silent), silent_at_s + NEW_OFFLINE_S + 2 * DEADLINE_S,
                 "the silent robots rebooted")
        wait_for(lambda: all(sp_status(sp, r) == "online" for r in silent), DEADLINE_S, "online again")
        statuses.drain(1.0)

        intervals = rebooting_intervals(statuses, silent)
        assert sorted(r for _, r, _, _ in intervals) == sorted(silent), intervals
        latencies = [start - silent_at for _, _, start, _ in intervals]
        # the last heartbeat comes up to 0.6 s before the silence
        assert all(NEW_OFFLINE_S - 1 <= x < OLD_OFFLINE_S - 1 for x in latencies), latencies
        peak = max_rebooting(intervals)
        assert peak == NEW_CAP, f"{peak} robots rebooting at once after the cap went {OLD_CAP} -> {NEW_CAP}"
        sent = commands_sent(after.stats())
        assert sent == {r: {"soft": 0, "hard": 1} for r in silent}, sent

        for name, p in svc.items():  # applied at run time: the very same processes
            assert p.proc.poll() is None and p.proc.pid == pids[name], f"{name} restarted"
        figures = {}
        for sim in sims:
            for k, v in event_figures(sim, events)[1].items():
                figures[k] = figures.get(k, 0) + v
        REPORT.add("config release without restart", commands_triggered=len(intervals) + 2,
                   commands_dispatched=len(intervals) + 2, commands_succeeded=len(intervals) + 2,
                   silent_to_dispatch_s=latencies, **figures)
        print(f"\nconfig: v{v_sp}/v{v_rc} applied, silent->dispatched {min(latencies):.1f}..{max(latencies):.1f}s,"
              f" peak {peak} rebooting")
    finally:
        statuses.close()
        events.close()
        for sim in sims:
            sim.stop()
    for name, p in svc.items():
        assert p.stop() == 0, f"{name} exit status, log: {p.output()[-2000:]}"

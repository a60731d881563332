"""The whole platform loop, all real: robot-sim (the vendor) registered through
robot-registry sends signed webhooks to webhook-ingest; robot 3 goes silent at
t=5 s; stream-processor marks it offline after stream.offline_after_s and asks
for a hard reboot on robot.commands.v1; reboot-command dispatches exactly one
command to the simulator, whose ack, boot and result come back through
webhook-ingest, so the command ends `succeeded` on robot.command-status.v1 and
the robot is online again. Real Redis and Apache Kafka (fixture infra)."""

import json
import time
import uuid

import redis

from e2e_support import (STATUS_TOPIC, EventCounter, Sim, StatusReader, commands_sent, register_fleet, resume_automation,
                         start_platform, ts, wait_for)
from report import REPORT

ROBOTS = 6
SILENT_ROBOT = 3
SILENT_AT_S = 5
OFFLINE_AFTER_S = 4
DEADLINE_S = 60  # silence -> command succeeded and robot online


def test_silent_robot_is_rebooted_once_and_comes_back(service, infra, tmp_path):
    t_begin = time.monotonic()
    svc = start_platform(service, tmp_path, sp_config={"stream.offline_after_s": OFFLINE_AFTER_S})
    registry, reboot, sp = svc["robot-registry"], svc["reboot-command"], svc["stream-processor"]
    resume_automation(reboot)

    # robot ids unique to this run: cooldowns and caps in the shared Redis never carry over
    sim = Sim(tmp_path, "e" + uuid.uuid4().hex[:6] + "-", ROBOTS, args=["--silent", f"{SILENT_ROBOT}@{SILENT_AT_S}"])
    statuses = StatusReader(infra["KAFKA_BOOTSTRAP_SERVERS"])
    events = EventCounter(infra["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        target = sim.rid(SILENT_ROBOT)
        register_fleet(registry, sim)
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
        # the silence began at most one heartbeat before silent_at; the verdict comes at
        # offline_after_s after the last heartbeat, the dispatch right after it
        latency = ts(dispatched["at"]) - silent_at
        assert latency <= OFFLINE_AFTER_S + 2, f"silent -> dispatched took {latency:.2f}s"
        ids, _ = events.count(sim.prefix)
        accepted = st["events_accepted"]
        assert len(ids) >= accepted, f"{accepted} events got 202, {len(ids)} distinct ids in Kafka"
        REPORT.add("silent robot", events_sent=sum(st["events"].values()), events_accepted=accepted,
                   events_in_kafka=len(ids), commands_triggered=len(cmds), commands_dispatched=1,
                   commands_succeeded=states.count("succeeded"),
                   duplicates=sum(n - 1 for n in ids.values()), losses=max(0, accepted - len(ids)),
                   silent_to_dispatch_s=[latency])
        print(f"\ne2e loop: {sum(st['events'].values())} events sent ({st['webhooks']['sent']} webhooks), "
              f"commands {sent}, command {cid} {' > '.join(states)}, "
              f"silent->dispatched {latency:.1f}s, "
              f"total {time.monotonic() - t_begin:.1f}s")
    finally:
        statuses.close()
        events.close()
        sim.stop()
    for name, p in svc.items():
        assert p.stop() == 0, f"{name} exit status, log: {p.output()[-2000:]}"

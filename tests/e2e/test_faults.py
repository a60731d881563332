"""Faults under a sustained simulated load, all real (ARCHITECTURE.md §7, "What
'no data lost' means here"). One platform on a private Redis and a private
Apache Kafka broker (the session's shared ones are left alone), robot-sim
registered through robot-registry with ROBOTS robots heartbeating every 500 ms
and a scripted silence every few seconds, so reboot triggers keep coming while
the faults happen. In turn, with the load running:

  1. kill -9 and restart each of the five services (same port, same config);
  2. stop the Kafka broker, keep it down BROKER_DOWN_S (longer than the
     stream-processor's 10 s transaction timeout, as a real restart is) and
     start it again (same port, same data);
  3. stop and restart Redis (same port, AOF on): webhooks are still accepted
     while it is down, and a config release from before is still there after.

A service that exits on its own meanwhile fails the test (reported at the end);
it is started again, as a supervisor would, so the rest still runs and reports.

After recovery, with the load still running: every webhook event that got a
202 is in robot.events.v1; every silence produced exactly one command and one
reboot at the vendor, and no other robot got one; every command reached a
terminal state (succeeded, as in a clean run); the stream-processor's state of
every robot (and its Redis mirror) equals what a fault-free run of the same
script leaves: online, no reboot in progress, no faults, and the last command
being the one of its silence. Every service then exits 0 on SIGTERM."""

import json
import time

from e2e_support import SERVICES, wait_for
from fault_support import Load, kill9, respawn, sanitizer_reports
from report import REPORT

ROBOTS = 200
OFFLINE_AFTER_S = 5
KILL_ORDER = ("webhook-ingest", "robot-registry", "reboot-command", "config-center", "stream-processor")
# second of the simulator's clock at which each fault's phase begins: two robots go
# silent then and 3 s later (until rebooted), and the fault itself starts when the
# first one's offline trigger is a second away, so triggers, dispatches and the
# vendor's acks all happen while a service, the broker or Redis is down
PHASES = dict(zip(KILL_ORDER + ("kafka", "redis"), (15, 25, 35, 45, 55, 65, 90)))
SILENCES = {}
for _k, _t in enumerate(PHASES.values()):
    SILENCES[5 + 14 * _k] = _t
    SILENCES[12 + 14 * _k] = _t + 3
CONFIG_NS = "e2e-faults"
BROKER_DOWN_S = 15


def _recover(load, crashes, when, timeout=120):
    """Every service ready again. A service that exited on its own (no one killed
    it) is a failure of the test, recorded in crashes and reported at the end; it
    is started again, as its supervisor would, so the remaining faults and the
    checks after recovery still run."""
    for name, p in load.procs.items():
        for _ in range(3):
            if p.proc.poll() is not None:
                lines = p.output().splitlines()
                errors = ([ln[:400] for ln in lines if "fatal" in ln.lower()] or
                          [ln[:400] for ln in lines if '"log.level":"error"' in ln])[-4:]
                crashes.append(f"{name} exited with status {p.proc.returncode} during {when} "
                               f"(at {load.elapsed():.0f}s); last errors: " + " | ".join(errors))
                print("\n" + crashes[-1])
                p.log.close()
                respawn(p)
            try:
                p.wait_ready(timeout)
                break
            except AssertionError:
                if p.proc.poll() is None:
                    raise


def _phase(load, name):
    """Waits for the phase's moment on the simulator's clock (a phase that the one
    before overran starts at once)."""
    at = PHASES[name] + OFFLINE_AFTER_S - 1
    wait_for(lambda: load.elapsed() >= at, at + 5, f"the {name} phase at {at}s")


def test_faults_under_sustained_load(service, tmp_path):
    t_begin = time.monotonic()
    load = Load(service, tmp_path, ROBOTS, SILENCES, OFFLINE_AFTER_S)
    timeline, crashes = [], []

    def mark(what):
        timeline.append(f"{what} at {load.elapsed():.0f}s")

    try:
        assert load.registered_after < min(SILENCES.values()), f"registration took {load.registered_after:.1f}s"
        load.wait_progress(2 * ROBOTS, 60, "before the faults")

        # 1. kill -9 and restart each service in turn
        for name in KILL_ORDER:
            p = load.procs[name]
            _phase(load, name)
            kill9(p)
            mark(f"kill -9 {name}")
            respawn(p)
            _recover(load, crashes, f"the kill -9 of {name}")
            mark(f"{name} ready")
            load.wait_progress(ROBOTS, 120, f"after {name} was restarted")
            if name == "stream-processor":  # its state is back from the changelog
                wait_for(lambda: all(load.sp_state(load.sim.rid(i)) for i in range(1, ROBOTS + 1)), 60,
                         "every robot in the restarted stream-processor's state")

        # 2. stop and restart the Kafka broker
        ingest = load.procs["webhook-ingest"]
        _phase(load, "kafka")
        load.kafka.stop()
        mark("broker stopped")
        down_since = time.monotonic()
        wait_for(lambda: ingest.readyz()[0] == 503, 30, "webhook-ingest not ready without the broker")
        # a real restart takes this long; longer than the stream-processor's
        # transaction timeout (10 s), so an open transaction outlives its broker
        time.sleep(max(0.0, BROKER_DOWN_S - (time.monotonic() - down_since)))
        load.kafka.start()
        mark("broker started")
        _recover(load, crashes, "the broker restart")
        load.wait_progress(2 * ROBOTS, 180, "after the broker restart")
        mark("load flowing after the broker restart")

        # 3. stop and restart Redis; a release that returned 200 must survive it
        center = load.procs["config-center"]
        s, _, b = center.request("PUT", f"/v1/namespaces/{CONFIG_NS}/draft", body=b"faults:\n  phase: redis\n",
                                 headers={"Content-Type": "application/yaml", "X-Consumer-Username": "e2e"})
        assert s == 200, b
        s, _, b = center.request("POST", f"/v1/namespaces/{CONFIG_NS}/releases", body=b'{"comment":"before"}',
                                 headers={"Content-Type": "application/json", "If-Match": '"0"',
                                          "X-Consumer-Username": "e2e"})
        released = json.loads(b)
        assert s == 201 and released["version"] == 1 and released["announced"] is True, released
        _phase(load, "redis")
        load.redis.stop()
        mark("redis stopped")
        # Redis is never a reason to drop a webhook
        load.wait_progress(ROBOTS, 60, "while Redis is down")
        load.redis.start()
        mark("redis started")
        _recover(load, crashes, "the Redis restart")
        s, _, b = center.get(f"/v1/namespaces/{CONFIG_NS}/releases")
        assert s == 200, b
        history = [(r["version"], r["checksum"]) for r in json.loads(b)["releases"]]
        assert history == [(1, released["checksum"])], (history, released)
        s, _, b = center.get(f"/v1/namespaces/{CONFIG_NS}")
        assert s == 200 and json.loads(b)["config"] == {"faults": {"phase": "redis"}}, b
        load.wait_progress(2 * ROBOTS, 120, "after the Redis restart")
        mark("load flowing after the Redis restart")

        # recovery: every silence rebooted once, every robot online again
        load.wait_converged(240)
        mark("converged")
        _recover(load, crashes, "the recovery")
        figures, latencies = load.check("faults")
        REPORT.add("faults under load", silent_to_dispatch_s=latencies, **figures)
        print(f"\ne2e faults: {figures}; {'; '.join(timeline)}; total {time.monotonic() - t_begin:.0f}s")
        bad = sanitizer_reports(load.procs)
        assert not bad, f"sanitizer reports: {bad}"
        assert not crashes, "services exited on their own during the faults:\n" + "\n".join(crashes)
        for name in SERVICES:
            p = load.procs[name]
            assert p.stop() == 0, f"{name} exit status, log: {p.output()[-2000:]}"
    finally:
        load.close()

"""Helpers of the fault tests (tests/e2e/test_faults.py) and the soak
(tests/soak/test_soak.py): a private Redis and a private Apache Kafka broker
that a test may stop and restart (the session's shared ones are left alone),
kill -9 and restart of a service on its own port, the sustained simulated load
(robot-sim registered through robot-registry, scripted silences) and the
after-recovery checks that both use: every event that got a 202 is in
robot.events.v1, no trigger produced two reboots, every command reached a
terminal state, and the stream-processor's state equals a clean run's."""

import concurrent.futures
import json
import os
import pathlib
import signal
import subprocess
import time
import uuid

import redis

from e2e_support import (BIN, ROOT, EventCounter, Sim, StatusReader, commands_sent, free_port, jcall,
                         resume_automation, start_platform, ts, wait_for)

TERMINAL = ("succeeded", "failed", "timed_out", "cancelled", "rejected")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


class PrivateRedis:
    """scripts/redis-local.sh on a port and data directory of its own (AOF on), so
    stop() + start() is a Redis restart at the same URL with the same data."""

    def __init__(self, run_dir):
        self.run_dir = pathlib.Path(run_dir)
        self.port = free_port()
        self.env = dict(os.environ, RUN_DIR=str(self.run_dir), REDIS_DIR=str(self.run_dir / "redis"),
                        REDIS_PORT=str(self.port))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.script = str(ROOT / "scripts" / "redis-local.sh")

    def start(self):
        out = subprocess.run([self.script, "start"], env=self.env, capture_output=True, text=True, check=True)
        assert f"REDIS_URL={self.url}" in out.stdout, out.stdout + out.stderr
        return self

    def stop(self):
        subprocess.run([self.script, "stop"], env=self.env, check=True, capture_output=True)

    def client(self):
        return redis.Redis.from_url(self.url, decode_responses=True)

    def pid(self):
        return int((self.run_dir / "redis" / "redis.pid").read_text())


class PrivateKafka:
    """scripts/kafka-local.sh with a RUN_DIR of its own and KAFKA_KEEP_DATA=1: a
    restart keeps the port, the cluster id and every topic's data."""

    def __init__(self, run_dir):
        self.run_dir = pathlib.Path(run_dir)
        self.env = dict(os.environ, RUN_DIR=str(self.run_dir), KAFKA_DIR=str(self.run_dir / "kafka"),
                        KAFKA_KEEP_DATA="1")
        self.env.pop("KAFKA_PORT", None)
        self.script = str(ROOT / "scripts" / "kafka-local.sh")
        self.bootstrap = None

    def start(self):
        out = subprocess.run([self.script, "start"], env=self.env, capture_output=True, text=True, check=True)
        boot = [line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("KAFKA_BOOTSTRAP_SERVERS=")]
        assert boot, out.stdout + out.stderr
        assert self.bootstrap in (None, boot[-1]), f"broker came back on {boot[-1]}, was {self.bootstrap}"
        self.bootstrap = boot[-1]
        return self

    def stop(self):
        subprocess.run([self.script, "stop"], env=self.env, check=True, capture_output=True)

    def pid(self):
        return int((self.run_dir / "kafka" / "kafka.pid").read_text())


def kill9(p):
    """SIGKILL: nothing flushed, nothing released, no exit handler."""
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait(30)
    assert p.proc.returncode == -signal.SIGKILL, p.proc.returncode
    p.log.close()


def respawn(p):
    """Starts a stopped ServiceProcess again: the same binary, config, environment
    and HTTP port (the simulator's webhooks and the registry's registration point
    at that URL), the log appended to the same file."""
    assert p.proc.poll() is not None
    p.log = open(p.log_path, "ab")
    p.proc = subprocess.Popen([str(BIN / p.name), "-c", str(p.config)], stdout=p.log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=p.env)
    return p


def sanitizer_reports(procs):
    """name -> log tail for every service whose log holds a sanitizer report."""
    bad = {}
    for name, p in procs.items():
        text = p.output()
        if any(m in text for m in SANITIZER_MARKS):
            bad[name] = text[-3000:]
    return bad


def rss_kb(pid):
    """VmRSS of a process in kB (Linux /proc)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def sim_sent(st):
    """Events the simulator posted to a registered webhook (not those before registration)."""
    return sum(st["events"].values()) - st["events_unrouted"]


def register_fleet_parallel(registry, sim, threads=8):
    """register_fleet (e2e_support) with the robots' policy PATCHes sent in
    parallel: hundreds of robots register in seconds, not half a minute, under ASan."""
    src = "e2e-" + uuid.uuid4().hex[:8]
    s, doc = jcall(registry, "PUT", f"/v1/sources/{src}", {"base_url": sim.url, "api_token": sim.token})
    assert s == 201, doc
    s, doc = jcall(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 201, doc
    s, doc = jcall(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 200 and doc["total"] == sim.robots, doc

    def patch(i):
        return jcall(registry, "PATCH", f"/v1/robots/{sim.rid(i)}",
                     {"policy": {"auto_reboot": True, "modes": ["soft", "hard"]}})
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        bad = [(i, r) for i, r in enumerate(ex.map(patch, range(1, sim.robots + 1)), 1) if r[0] != 200]
    assert not bad, bad[:3]
    return src


class Load:
    """The platform on a private Redis and Kafka with a sustained simulated load:
    `robots` robots heartbeating every 500 ms, robot number n of `silences`
    (n -> second) going silent then until it is rebooted. Everything started is
    stopped by close()."""

    def __init__(self, service, tmp_path, robots, silences, offline_after_s, sp_config=None, reboot_config=None,
                 sim_args=()):
        self.tmp = tmp_path
        self.robots = robots
        self.silences = dict(silences)
        self.offline_after_s = offline_after_s
        self.redis = PrivateRedis(tmp_path / "redis-run").start()
        self.kafka = PrivateKafka(tmp_path / "kafka-run")
        self.sim = self.events = self.statuses = None
        self.procs = {}
        try:
            self.kafka.start()
            self.env = {"REDIS_URL": self.redis.url, "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap}
            sp = {"stream.offline_after_s": offline_after_s,
                  # a restarted instance takes its partitions over once the dead one's session ends
                  "kafka.properties": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}}
            sp.update(sp_config or {})
            self.procs = start_platform(service, tmp_path, sp_config=sp, reboot_config=reboot_config, env=self.env)
            resume_automation(self.procs["reboot-command"])
            self.events = EventCounter(self.kafka.bootstrap)
            self.statuses = StatusReader(self.kafka.bootstrap)
            scenario = tmp_path / "scenario.txt"
            scenario.write_text("".join(f"silent {n}@{t}\n" for n, t in sorted(self.silences.items())))
            self.prefix = "f" + uuid.uuid4().hex[:6] + "-"
            # the vendor retries a refused or failed delivery for minutes (same webhook-id)
            self.sim = Sim(tmp_path, self.prefix, robots,
                           args=["--scenario", str(scenario), "--retries", "100", "--senders", "8", *sim_args])
            register_fleet_parallel(self.procs["robot-registry"], self.sim)
            self.registered_after = time.time() - self.sim.started
        except BaseException:
            self.close()
            raise

    # ---- watching the load -------------------------------------------------------
    def stats(self):
        return self.sim.stats()

    def accepted(self):
        return self.stats()["events_accepted"]

    def wait_progress(self, events, timeout, what):
        """Waits until the simulator got `events` more events accepted (202)."""
        base = self.accepted()
        wait_for(lambda: self.accepted() >= base + events, timeout, f"{events} more events accepted {what}")

    def sp_state(self, rid):
        s, _, b = self.procs["stream-processor"].get(f"/v1/state/{rid}", timeout=5)
        return json.loads(b) if s == 200 else None

    def silent_rids(self):
        return {self.sim.rid(n) for n in self.silences}

    def elapsed(self):
        return time.time() - self.sim.started

    # ---- the checks after recovery ------------------------------------------------
    def wait_converged(self, timeout):
        """Every scripted silence has fired and its reboot has ended, every robot is
        online in the stream-processor: the state a clean run ends in."""
        last = max(self.silences.values()) if self.silences else 0
        wait_for(lambda: self.elapsed() > last + 1, last + 10, "every scripted silence fired")

        def done():
            self.statuses.drain(0.3)
            for rid in self.silent_rids():
                cmds = self.statuses.commands(rid)
                if not cmds or any(ds[-1]["state"] not in TERMINAL for ds in cmds.values()):
                    return None
            st = self.stats()
            if st["silent_count"] or st["rebooting_count"]:
                return None
            return all((self.sp_state(self.sim.rid(i)) or {}).get("status") == "online"
                       for i in range(1, self.robots + 1))
        wait_for(done, timeout, "every scripted silence rebooted and every robot online")

    def expected_clean_state(self, rid, command_id):
        """What a fault-free run of the same script leaves for a robot: online, no
        reboot in progress, no faults, and the one command of its silence (if any)."""
        return {"status": "online", "reboot_in_progress": False, "faults_in_window": 0,
                "last_command_id": command_id}

    def check(self, scenario, redis_expect=None):
        """The after-recovery assertions, with the load still running; stops the
        simulator at the end to count every event. Returns the figures, recorded
        in the e2e report under `scenario`."""
        sim, rc = self.sim, self.procs["reboot-command"]
        self.statuses.drain(1.0)
        # no trigger produced two reboots: one command per silence, none elsewhere
        st = self.stats()
        sent = commands_sent(st)
        silent = self.silent_rids()
        assert set(sent) == silent, (f"commands reached robots {sorted(set(sent) - silent)} that were never silent, "
                                     f"none reached {sorted(silent - set(sent))}")
        twice = {r: c for r, c in sent.items() if c["soft"] + c["hard"] != 1}
        assert not twice, f"robots rebooted more than once by the vendor: {twice}"
        assert st["commands"]["idempotency_conflicts"] == 0, st["commands"]
        ours = {r for r in self.statuses.by_robot if r.startswith(sim.prefix)}
        assert ours == silent, f"command status for {sorted(ours - silent)}, missing {sorted(silent - ours)}"
        command_of, latencies, finals = {}, [], {}
        for rid in sorted(silent):
            cmds = self.statuses.commands(rid)
            assert len(cmds) == 1, f"{rid}: {len(cmds)} commands: " + json.dumps(
                {c: [d["state"] for d in ds] for c, ds in cmds.items()})
            (cid, trans), = cmds.items()
            states = [d["state"] for d in trans]
            # every command reached a terminal state, and the clean run's one
            assert states[-1] in TERMINAL, f"{rid} {cid}: {states}"
            assert states[-1] == "succeeded", f"{rid} {cid}: {states}"
            assert "requested" in states and "dispatched" in states, f"{rid} {cid}: {states}"
            assert states.index("requested") < states.index("dispatched") < len(states) - 1, states
            finals[states[-1]] = finals.get(states[-1], 0) + 1
            command_of[rid] = cid
            dispatched = next(d for d in trans if d["state"] == "dispatched")
            latencies.append(ts(dispatched["at"]) - (sim.started + self.silences[int(rid[len(sim.prefix):])]))
            s, doc = _jget(rc, f"/v1/commands/{cid}")
            assert s == 200 and doc["state"] == "succeeded", (rid, s, doc)
        # every command the reboot-command service holds for these robots is terminal
        for rid in sorted(silent):
            s, doc = _jget(rc, f"/v1/commands?robot_id={rid}&limit=100")
            assert s == 200, doc
            held = [(c["command_id"], c["state"], c["mode"], c["origin"]) for c in doc["items"]]
            assert held == [(command_of[rid], "succeeded", "hard", "automatic")], (rid, doc)
        assert st["reboots"]["succeeded"] == len(silent) and st["reboots"]["failed"] == 0, st["reboots"]
        assert st["reboots"]["refused"] == 0, st["reboots"]

        # the stream-processor's state equals a clean run's, robot by robot
        want = {sim.rid(i): self.expected_clean_state(sim.rid(i), command_of.get(sim.rid(i)))
                for i in range(1, self.robots + 1)}
        got = {}
        for rid in want:
            doc = self.sp_state(rid)
            got[rid] = None if doc is None else {k: doc.get(k) for k in want[rid]}
        diff = {r: (got[r], want[r]) for r in want if got[r] != want[r]}
        assert not diff, f"{len(diff)} robots differ from the clean run (got, want): " + json.dumps(
            dict(list(diff.items())[:5]))
        # ... and so does its Redis mirror
        red = self.redis.client()
        mirror = {r: red.hgetall(f"state:robot:{r}") for r in want}
        off = {r: m for r, m in mirror.items() if m.get("status") != "online" or m.get("reboot_in_progress") not in
               ("0", "false") or m.get("faults_in_window") != "0"}
        assert not off, f"{len(off)} mirrors differ from the clean run: " + json.dumps(dict(list(off.items())[:3]))

        # every event that got a 202 is in robot.events.v1 (those answered 202 up to
        # now; the simulator's drain at SIGTERM may add more, never fewer, ids)
        st = self.stats()
        assert st["webhooks"]["failed"] == 0 and st["webhooks"]["rejected"] == 0, st["webhooks"]
        assert st["webhooks"]["dropped"] == 0, st["webhooks"]
        sim.stop()
        ids, _ = self.events.count(sim.prefix, timeout=120)
        accepted = st["events_accepted"]
        assert accepted > 0
        assert len(ids) >= accepted, f"{accepted} events got 202, only {len(ids)} distinct ids in robot.events.v1"
        dups = sum(n - 1 for n in ids.values())
        figures = dict(events_sent=sim_sent(st), events_accepted=accepted, events_in_kafka=len(ids),
                       commands_triggered=len(command_of), commands_dispatched=len(command_of),
                       commands_succeeded=finals.get("succeeded", 0), duplicates=dups,
                       losses=max(0, accepted - len(ids)))
        return figures, latencies

    def close(self):
        for obj in (self.statuses, self.events):
            if obj is not None:
                obj.close()
        if self.sim is not None:
            self.sim.stop()
        for p in self.procs.values():
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        for b in (self.kafka, self.redis):
            try:
                b.stop()
            except Exception:  # already stopped, or never started
                pass


def _jget(svc, path):
    s, _, b = svc.get(path, timeout=10)
    return s, (json.loads(b) if b else None)

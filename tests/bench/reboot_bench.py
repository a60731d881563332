"""reboot-command benchmark (scripts/bench.sh bench_reboot).

Writes BENCH_REBOOT_COMMANDS robots (one vendor source pointing at the C
robot simulator, which answers 202 at once on keep-alive connections), starts reboot-command with a
policy that lets every command through (no cooldown, no fleet cap), fills
robot.commands.v1 with one automatic hard reboot per robot, then measures
commands/s from the topic to the vendor's POST (first to last vendor call) and
the p99 decision-to-dispatch latency from the service's
reboot_dispatch_latency_seconds histogram. Prints one JSON line last.

    python3 tests/bench/reboot_bench.py BUILD WORKDIR
"""

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import redis
import yaml
from confluent_kafka import Producer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

N = int(os.environ.get("BENCH_REBOOT_COMMANDS", "20000"))
BS = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
CLK = os.sysconf("SC_CLK_TCK")


class SimVendor:
    """The project's C robot simulator (build/bin/robot-sim) as the vendor: it
    answers POST /v1/robots/{id}/commands with 202 on keep-alive connections and
    remembers every Idempotency-Key (a repeated key counts as a duplicate). Its
    robots do not heartbeat or finish reboots during the run. A poller thread
    reads /sim/stats to time the first and the last accepted command."""

    def __init__(self, build, workdir, n):
        self.port = int(os.environ.get("SIM_PORT") or free_port())
        self.token = "bench-token"
        self.log = open(os.path.join(workdir, "logs", "robot-sim.log"), "wb")
        self.proc = subprocess.Popen(
            [f"{build}/bin/robot-sim", "--token", self.token, "--port", str(self.port),
             "--robots", str(n), "--fleets", "1", "--id-prefix", "rb-",
             "--heartbeat-ms", "3600000", "--reboot-ms", "3600000", "--status-prob", "0",
             "--fault-prob", "0", "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.count = self.dupes = 0
        self.first = self.last = None
        self.stop = False
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                self.stats()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.proc.kill()
            sys.exit("robot-sim did not start")
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/sim/stats", timeout=5) as r:
            return json.loads(r.read())["commands"]

    def _poll(self):
        while not self.stop:
            try:
                c = self.stats()
            except OSError:
                time.sleep(0.02)
                continue
            now = time.monotonic()
            n = int(c["accepted"])
            if n and self.first is None:
                self.first = now
            if n > self.count:
                self.last = now
            self.count, self.dupes = n, int(c["duplicates_suppressed"])
            time.sleep(0.02)

    def close(self):
        self.stop = True
        self.thread.join()
        self.proc.terminate()
        self.proc.wait(30)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seal(aad, plain):
    key = base64.b64decode(os.environ["SECRETS_KEY"])
    nonce = os.urandom(12)
    return "v1:k1:" + base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, aad.encode())).decode()


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def p99_ms(text):
    """p99 from the histogram buckets (linear inside the bucket)."""
    buckets = []
    for line in text.splitlines():
        if line.startswith("reboot_dispatch_latency_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    target, prev_le, prev_n = 0.99 * total, 0.0, 0.0
    for le, n in buckets:
        if n >= target:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (target - prev_n) / max(n - prev_n, 1)) * 1000
        prev_le, prev_n = le, n
    return None


def main():
    build, workdir = sys.argv[1], sys.argv[2]
    run = int(time.time())
    vendor = SimVendor(build, workdir, N)
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    src = "bench-vendor"
    r.hset(f"source:{src}", mapping={
        "id": src, "base_url": f"http://127.0.0.1:{vendor.port}",
        "signature_scheme": "standard-webhooks",
        "api_token": seal(f"source:{src}:api_token", vendor.token.encode()),
        "webhook_secrets": seal(f"source:{src}:webhook_secrets", b"[]"), "version": 1})
    pipe = r.pipeline(transaction=False)
    for i in range(N):
        rid = "rb-%05d" % (i + 1)
        rec = {"id": rid, "name": rid, "model": "AX", "fleet": "f", "source": src,
               "status": "online", "labels": {}, "policy": {"auto_reboot": True, "modes": ["soft", "hard"]},
               "maintenance_window": None, "busy": False, "version": 1,
               "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
               "updated_by": "bench"}
        pipe.hset(f"robot:{rid}", mapping={"record": json.dumps(rec), "version": 1})
    pipe.execute()

    doc = yaml.safe_load(open("services/reboot-command/reboot-command.yaml"))
    doc["reboot"].update({"cooldown_s": 0, "max_per_robot_per_day": 1000,
                          "fleet_max_concurrent": 1000000, "fleet_queue_max": 10000000,
                          "ack_timeout_s": 3600, "abort_min_count": 1000000})
    doc["dispatch"].update({"workers": int(os.environ.get("BENCH_REBOOT_WORKERS", "32")),
                            "per_vendor_max": int(os.environ.get("BENCH_REBOOT_WORKERS", "32"))})
    cfg = os.path.join(workdir, "reboot-bench.yaml")
    with open(cfg, "w") as f:
        yaml.safe_dump(doc, f)
    port = os.environ["RB_PORT"]
    env = dict(os.environ, HTTP_PORT=port, LOG_LEVEL="warn",
               REBOOT_CONSUMER_GROUP="reboot-bench-%d" % int(time.time()))
    log = open(os.path.join(workdir, "logs", "reboot-command.log"), "wb")
    proc = subprocess.Popen([f"{build}/bin/reboot-command", "-c", cfg], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    break
        except Exception:
            time.sleep(0.2)
    else:
        proc.kill()
        vendor.close()
        sys.exit("reboot-command did not become ready")

    p = Producer({"bootstrap.servers": BS, "linger.ms": 20, "enable.idempotence": True})
    now = float(run)
    t_produce = time.monotonic()
    for i in range(N):
        rid = "rb-%05d" % (i + 1)
        cid = "bench-%d-%06d" % (int(now), i)
        ce = {"specversion": "1.0", "id": cid, "source": "/bench", "type": "robot.reboot.requested",
              "subject": rid, "time": iso(now), "datacontenttype": "application/json",
              "data": {"command_id": cid, "robot_id": rid, "mode": "hard", "reason": "offline",
                       "origin": "automatic", "requested_at": iso(now), "force": False}}
        while True:
            try:
                p.produce("robot.commands.v1", key=rid.encode(), value=json.dumps(ce).encode())
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(60)
    deadline = time.monotonic() + 300
    while vendor.count < N and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    text = metrics(port)
    stat = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
    cpu_s = (int(stat[11]) + int(stat[12])) / CLK
    rss = 0
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    proc.terminate()
    rc = proc.wait(60)
    time.sleep(0.1)
    vendor.close()
    span = (vendor.last or 0) - (vendor.first or 0)
    out = {"commands": N, "dispatched": vendor.count, "duplicates": vendor.dupes,
           "cmds_per_s": round(vendor.count / span, 1) if span > 0 else None,
           "end_to_end_s": round((vendor.last or time.monotonic()) - t_produce, 2),
           "p99_ms": round(p99_ms(text), 2) if p99_ms(text) is not None else None,
           "cpu_s": round(cpu_s, 2), "rss_mib_peak": round(rss, 1), "exit": rc}
    print(json.dumps(out))
    sys.exit(0 if vendor.count == N and rc == 0 else 1)


if __name__ == "__main__":
    main()

"""Load tool behind `scripts/bench.sh config`: two measurements against a
running config-center and N running services.

  latency  CC_URL LOG... : releases the webhook-ingest namespace ROUNDS times
           and reads, from each service's ECS log, when the new version was
           applied (the reload callbacks run right after); prints p50/p99 of
           release request sent -> applied, over every service and round.
  watchers CC_URL PID N  : opens N long-poll watch connections (asyncio, raw
           HTTP/1.1), waits until config-center reports them all waiting,
           releases the namespace and measures until every watcher has its
           200; prints fan-out time and config-center's RSS.
Each prints one JSON line last."""

import asyncio
import json
import statistics
import sys
import time
import urllib.request
from datetime import datetime


def call(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def release(cc, ns, text):
    call(f"{cc}/v1/namespaces/{ns}/draft", "PUT", text.encode())
    cur = call(f"{cc}/v1/namespaces")["namespaces"]
    base = next((n["version"] for n in cur if n["namespace"] == ns), 0)
    t = time.time()
    out = call(f"{cc}/v1/namespaces/{ns}/releases", "POST", b'{"comment":"bench"}',
               {"If-Match": f'"{base}"'})
    return out["version"], t


def applied_times(log, ns):
    """version -> wall time (s) of "config version N of 'ns' applied" in an ECS log."""
    out = {}
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "applied" not in line or not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("config.namespace") == ns and "config.version" in rec:
                ts = datetime.strptime(rec["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
                out[int(rec["config.version"])] = (ts - datetime(1970, 1, 1)).total_seconds()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latency(cc, logs, rounds=60):
    sent = {}
    for i in range(rounds):
        v, t = release(cc, "webhook-ingest", f"ingest:\n  max_batch: {100 + i}\n")
        sent[v] = t
        time.sleep(0.05)
    time.sleep(2)
    samples, missing = [], 0
    for log in logs:
        got = applied_times(log, "webhook-ingest")
        for v, t in sent.items():
            if v in got:
                samples.append((got[v] - t) * 1000)
            else:
                missing += 1
    res = {"services": len(logs), "releases": rounds, "samples": len(samples),
           "missing": missing, "p50_ms": round(pct(samples, 50), 1) if samples else None,
           "p99_ms": round(pct(samples, 99), 1) if samples else None,
           "max_ms": round(max(samples), 1) if samples else None}
    print(json.dumps(res))
    return 0 if samples and not missing else 1


def rss_mib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def waiting(cc):
    with urllib.request.urlopen(f"{cc}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("config_watchers "):
                return int(float(line.split()[1]))
    return 0


async def one_watch(host, port, path, done, opened):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    opened.append(1)
    status = await reader.readline()
    done.append((time.monotonic(), status.split()[1] if status else b"?"))
    writer.close()


async def watchers(cc, pid, n):
    host, port = cc.split("//")[1].split(":")
    ns = "bench-watch"
    version, _ = release(cc, ns, "x: 0\n")
    path = f"/v1/watch?ns={ns}:{version}&timeout=60"
    done, opened, tasks = [], [], []
    for i in range(n):
        tasks.append(asyncio.create_task(one_watch(host, int(port), path, done, opened)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    t_wait = time.monotonic() + 60
    while waiting(cc) < n and time.monotonic() < t_wait:
        await asyncio.sleep(0.2)
    held = waiting(cc)
    rss_before = rss_mib(pid)
    t0 = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, release, cc, ns, "x: 1\n")
    await asyncio.wait(tasks, timeout=30)
    ok = [t for t, st in done if st == b"200"]
    res = {"watchers": n, "held": held, "notified": len(ok),
           "fanout_ms": round((max(ok) - t0) * 1000, 1) if ok else None,
           "rss_mib_waiting": round(rss_before, 1), "rss_mib_after": round(rss_mib(pid), 1),
           "rss_mib_peak": round(rss_mib(pid, "VmHWM"), 1)}
    print(json.dumps(res))
    return 0 if len(ok) == n else 1


def main():
    mode = sys.argv[1]
    if mode == "latency":
        return latency(sys.argv[2], sys.argv[3:])
    return asyncio.run(watchers(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))


if __name__ == "__main__":
    sys.exit(main())

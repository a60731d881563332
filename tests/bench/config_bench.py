"""Load tool behind `scripts/bench.sh config`: two measurements against a
running config-center and N running services.

  latency  CC_URL LOG... : releases the webhook-ingest namespace ROUNDS times
           and reads, from each service's ECS log, when the new version was
           applied (the reload callbacks run right after); prints p50/p99 of
           release request sent -> that version or a newer one applied, over
           every service and round.
  watchers CC_URL PID N  : opens N long-poll watch connections (raw HTTP/1.1
           on non-blocking sockets), waits until config-center reports them
           all waiting, releases the namespace and measures, with the kernel's
           receive timestamp of each answer, release request sent -> last 200
           arrived; prints fan-out time and config-center's RSS.
Each prints one JSON line last."""

import json
import select
import socket
import statistics
import struct
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
            # a service that learns of two releases at once applies only the newer:
            # release v reached it when the first version >= v was applied
            later = [got[u] for u in got if u >= v]
            if later:
                samples.append((min(later) - t) * 1000)
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


SO_TIMESTAMPNS = 35  # asm-generic/socket.h; Python's socket module does not name it


def kernel_ts(anc):
    """Realtime seconds of the first segment read, from an SCM_TIMESTAMPNS cmsg, or None."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9
    return None


def open_watchers(host, port, path, n):
    """n connected non-blocking sockets, each with its watch request sent."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    socks = []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.sendall(req)
        s.setblocking(False)
        socks.append(s)
        if i % 500 == 499:
            time.sleep(0.05)
    return socks


def collect(socks, deadline):
    """fd -> (kernel arrival time or None, client read time, status) of each answer's first bytes."""
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    got = {}
    while len(got) < len(socks) and time.time() < deadline:
        for fd, _ in ep.poll(0.5):
            s = by_fd[fd]
            try:
                data, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(16))
            except BlockingIOError:
                continue
            except OSError:
                data, anc = b"", []
            parts = data.split()
            got[fd] = (kernel_ts(anc), time.time(), parts[1] if len(parts) > 1 else b"?")
            ep.unregister(fd)
    ep.close()
    for s in socks:
        s.close()
    return got


def watchers(cc, pid, n):
    """
    The answers' arrival times are the kernel's receive timestamps (SO_TIMESTAMPNS,
    realtime), so the figure is when config-center's answers reached the socket,
    not when this single Python thread got round to reading 10,000 of them.
    """
    host, port = cc.split("//")[1].split(":")
    ns = "bench-watch"
    version, _ = release(cc, ns, "x: 0\n")
    socks = open_watchers(host, int(port), f"/v1/watch?ns={ns}:{version}&timeout=60", n)
    t_wait = time.monotonic() + 60
    while waiting(cc) < n and time.monotonic() < t_wait:
        time.sleep(0.2)
    held = waiting(cc)
    rss_before = rss_mib(pid)
    _, t0 = release(cc, ns, "x: 1\n")  # t0: realtime just before the release request is sent
    got = collect(socks, time.time() + 30)
    ok = [v for v in got.values() if v[2] == b"200"]
    kern = sorted(k - t0 for k, _, _ in ok if k is not None)
    read = sorted(r - t0 for _, r, _ in ok)
    res = {"watchers": n, "held": held, "notified": len(ok),
           "fanout_ms": round(kern[-1] * 1000, 1) if len(kern) == len(ok) and ok else None,
           "first_ms": round(kern[0] * 1000, 1) if kern else None,
           "p50_ms": round(pct(kern, 50) * 1000, 1) if kern else None,
           "client_read_ms": round(read[-1] * 1000, 1) if read else None,
           "rss_mib_waiting": round(rss_before, 1), "rss_mib_after": round(rss_mib(pid), 1),
           "rss_mib_peak": round(rss_mib(pid, "VmHWM"), 1)}
    print(json.dumps(res))
    return 0 if len(ok) == n and res["fanout_ms"] is not None else 1


def main():
    mode = sys.argv[1]
    if mode == "latency":
        return latency(sys.argv[2], sys.argv[3:])
    return watchers(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))


if __name__ == "__main__":
    sys.exit(main())

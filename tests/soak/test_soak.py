"""The soak: the platform under a steady simulated load for SOAK_SECONDS (default
1800), on a private Redis and Apache Kafka, the release build (scripts/soak.sh,
`make soak`; never part of `make test`).

SOAK_ROBOTS robots (default 500) heartbeat every 500 ms (≈ 1000 events/s) and
one robot goes silent every SOAK_SILENCE_EVERY_S seconds (default 30), so
reboots keep flowing through the whole loop. Every SOAK_SAMPLE_S seconds
(default 10) the VmRSS of each of the five services is sampled. Asserted:

- RSS flat: after the warm-up (the first SOAK_WARMUP_S seconds, default a fifth
  of the run, at least 60 s) no service's RSS grows by more than
  SOAK_RSS_BOUND_MB (default 8 MiB): the largest sample of the last quarter of
  the run minus the first sample after the warm-up;
- zero lost events: every event that got a 202 is in robot.events.v1, and no
  delivery failed or was dropped;
- the checks of the fault tests hold at the end (fault_support.Load.check):
  one reboot per silence and none elsewhere, every command succeeded, the
  stream-processor's state of every robot equals a clean run's;
- every service exits 0 on SIGTERM."""

import os
import time

from fault_support import Load, rss_kb, sanitizer_reports
from report import REPORT

SECONDS = int(os.environ.get("SOAK_SECONDS", "1800"))
ROBOTS = int(os.environ.get("SOAK_ROBOTS", "500"))
SAMPLE_S = float(os.environ.get("SOAK_SAMPLE_S", "10"))
SILENCE_EVERY_S = int(os.environ.get("SOAK_SILENCE_EVERY_S", "30"))
WARMUP_S = float(os.environ.get("SOAK_WARMUP_S", str(max(60, SECONDS // 5))))
RSS_BOUND_KB = int(float(os.environ.get("SOAK_RSS_BOUND_MB", "8")) * 1024)
OFFLINE_AFTER_S = 10


def test_soak_rss_flat_and_no_event_lost(service, tmp_path):
    assert SECONDS > WARMUP_S + 2 * SAMPLE_S, "SOAK_SECONDS too short for the warm-up and two samples"
    # robot numbers spread over the fleet; the last silence ends well before the run does
    times = range(30, max(31, SECONDS - 3 * OFFLINE_AFTER_S - 30), SILENCE_EVERY_S)
    silences = {1 + (k * 37) % ROBOTS: t for k, t in enumerate(times)}
    assert len(silences) == len(times), "SOAK_ROBOTS too small for the silences"
    load = Load(service, tmp_path, ROBOTS, silences, OFFLINE_AFTER_S)
    samples = []  # (seconds since start, {name: kB})
    try:
        t0 = time.monotonic()
        next_at = t0
        while time.monotonic() - t0 < SECONDS:
            for name, p in load.procs.items():
                assert p.proc.poll() is None, f"{name} exited: {p.output()[-2000:]}"
            samples.append((time.monotonic() - t0, {n: rss_kb(p.proc.pid) for n, p in load.procs.items()}))
            st = load.stats()["webhooks"]
            assert st["failed"] == 0 and st["dropped"] == 0 and st["rejected"] == 0, st
            next_at += SAMPLE_S
            time.sleep(max(0.0, next_at - time.monotonic()))

        after = [s for s in samples if s[0] >= WARMUP_S]
        tail = [s for s in after if s[0] >= SECONDS * 0.75]
        assert len(after) >= 2 and tail, f"too few samples after the warm-up: {len(after)}"
        lines, growth = [], {}
        for name in load.procs:
            base = after[0][1][name]
            peak = max(s[1][name] for s in tail)
            growth[name] = peak - base
            lines.append(f"  {name:17} RSS {samples[0][1][name] / 1024:7.1f} MiB at start, "
                         f"{base / 1024:7.1f} MiB after warm-up, {peak / 1024:7.1f} MiB peak of the last quarter, "
                         f"growth {growth[name] / 1024:+.1f} MiB (bound {RSS_BOUND_KB / 1024:.0f} MiB)")
        print(f"\nsoak: {SECONDS}s, {ROBOTS} robots, {len(silences)} silences, {len(samples)} RSS samples every "
              f"{SAMPLE_S:.0f}s, warm-up {WARMUP_S:.0f}s\n" + "\n".join(lines))

        load.wait_converged(120)
        figures, latencies = load.check("soak")
        REPORT.add(f"soak {SECONDS}s", silent_to_dispatch_s=latencies, **figures)
        print(f"soak: {figures}")
        assert figures["losses"] == 0, figures
        grown = {n: g for n, g in growth.items() if g > RSS_BOUND_KB}
        assert not grown, (f"RSS grew beyond {RSS_BOUND_KB} kB after the warm-up: "
                           + ", ".join(f"{n} +{g} kB" for n, g in grown.items()))
        bad = sanitizer_reports(load.procs)
        assert not bad, f"sanitizer reports: {bad}"
        for name, p in load.procs.items():
            assert p.stop() == 0, f"{name} exit status, log: {p.output()[-2000:]}"
    finally:
        load.close()

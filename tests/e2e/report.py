"""The end-to-end run's summary report. Each scenario records what it saw with
REPORT.add(scenario, ...); the e2e conftest prints the totals and one line per
scenario at the end of the pytest run (pytest_terminal_summary), so every
`make test` shows events sent / accepted / in Kafka, commands triggered /
dispatched / succeeded, duplicates, losses and the "robot silent" ->
"reboot dispatched" latency percentiles."""

import math
import threading

COUNTS = ("events_sent", "events_accepted", "events_in_kafka", "commands_triggered",
          "commands_dispatched", "commands_succeeded", "duplicates", "losses")


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


class Report:
    def __init__(self):
        self._lock = threading.Lock()
        self.rows = []

    def add(self, scenario, silent_to_dispatch_s=(), **counts):
        """counts: any of COUNTS (ints); silent_to_dispatch_s: latencies in seconds."""
        unknown = set(counts) - set(COUNTS)
        if unknown:
            raise ValueError(f"unknown report fields {sorted(unknown)}")
        with self._lock:
            self.rows.append((scenario, dict(counts), list(silent_to_dispatch_s)))

    def lines(self):
        with self._lock:
            rows = list(self.rows)
        if not rows:
            return []
        total = {k: sum(c.get(k, 0) for _, c, _ in rows) for k in COUNTS}
        lat = [x for _, _, ls in rows for x in ls]
        out = ["e2e summary: events sent {events_sent}, accepted {events_accepted}, in Kafka {events_in_kafka}; "
               "commands triggered {commands_triggered}, dispatched {commands_dispatched}, "
               "succeeded {commands_succeeded}; duplicates {duplicates}; losses {losses}".format(**total)]
        if lat:
            out.append(f"e2e silent -> reboot dispatched: n={len(lat)} p50 {percentile(lat, 50):.2f} s, "
                       f"p99 {percentile(lat, 99):.2f} s")
        for name, c, ls in rows:
            figures = ", ".join(f"{k} {c[k]}" for k in COUNTS if k in c)
            if ls:
                figures += f", silent->dispatched p50 {percentile(ls, 50):.2f} s"
            out.append(f"  {name}: {figures}")
        return out


REPORT = Report()

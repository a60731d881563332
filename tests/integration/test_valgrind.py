"""The integration path under valgrind: the optimised (non-sanitizer) build of
webhook-ingest takes real webhooks into real Kafka, shuts down on SIGTERM, and
valgrind reports no memory errors and no definite leaks."""

import json
import os
import subprocess

import pytest

from conftest import ROOT, ServiceProcess
from ingest_helpers import EventTail, event, new_secret, post_webhook, register_source, unique_source

PLAIN_BIN = ROOT / "build" / "bin"


def test_webhook_ingest_is_valgrind_clean(infra, tmp_path):
    if not (PLAIN_BIN / "webhook-ingest").exists():
        pytest.fail("build/bin/webhook-ingest is missing: `make test` builds it (make all)")
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    svc = ServiceProcess("webhook-ingest", tmp_path)
    vg_log = tmp_path / "valgrind.log"
    cmd = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
           "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
           f"--log-file={vg_log}", str(PLAIN_BIN / "webhook-ingest"), "-c", str(svc.config)]
    svc.log = open(svc.log_path, "wb")
    svc.proc = subprocess.Popen(cmd, stdout=svc.log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=svc.env)
    try:
        svc.wait_ready(120)
        tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
        url = f"http://127.0.0.1:{svc.port}"
        assert post_webhook(url, src, secret, event("vg-1"), timeout=60)[0] == 202
        assert post_webhook(url, src, secret, [event("vg-2"), event("vg-3")], timeout=60)[0] == 202
        assert post_webhook(url, src, new_secret(), event("vg-4"), timeout=60)[0] == 401
        assert post_webhook(url, src, secret, None, body=b"{", timeout=60)[0] == 400
        msgs = tail.collect(until=lambda m: len(m) >= 3, timeout=30)
        tail.close()
        assert sorted(json.loads(m.value())["subject"] for m in msgs) == ["vg-1", "vg-2", "vg-3"]
        rc = svc.stop(timeout=120)
    finally:
        if svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()
    report = vg_log.read_text()
    assert rc == 0, f"exit {rc}; valgrind says:\n{report[-6000:]}"
    assert "definitely lost" not in report and "Invalid" not in report, report[-6000:]

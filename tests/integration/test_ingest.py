"""webhook-ingest against real Redis and real Apache Kafka: signatures, every
error case, dedupe, Redis down, broker down, kill -9 and SIGTERM under load."""

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
import redis as redislib

from conftest import ROOT, free_port, http, wait_for
from ingest_helpers import (EventTail, event, new_secret, post_webhook, register_source,
                            sign_github, sign_standard, unique_source)

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


@pytest.fixture
def ingest(service, infra):
    """A running webhook-ingest with one fresh standard-webhooks source."""
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    svc = service("webhook-ingest").wait_ready()
    svc.source, svc.secret = src, secret
    return svc


def base(svc):
    return f"http://127.0.0.1:{svc.port}"


def problem(body):
    doc = json.loads(body)
    assert {"type", "title", "status", "detail"} <= doc.keys(), doc
    return doc


def test_accepts_event_into_kafka_with_cloudevent_and_traceparent(ingest, infra):
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ev = event("robot-42", id="evt-1")
    status, headers, body, wid = post_webhook(base(ingest), ingest.source, ingest.secret, ev,
                                              headers={"traceparent": parent})
    assert status == 202, body
    doc = json.loads(body)
    assert doc == {"accepted": 1, "ids": ["evt-1"]}
    msgs = tail.collect(until=lambda m: len(m) >= 1)
    tail.close()
    assert len(msgs) == 1
    m = msgs[0]
    assert m.key() == b"robot-42"
    ce = json.loads(m.value())
    assert ce["specversion"] == "1.0"
    assert ce["id"] == "evt-1"
    assert ce["source"] == f"/webhook-ingest/{ingest.source}"
    assert ce["type"] == "robot.heartbeat"
    assert ce["subject"] == "robot-42"
    assert ce["time"] == ev["occurred_at"]
    assert ce["datacontenttype"] == "application/json"
    assert ce["data"]["robot_id"] == "robot-42"
    assert ce["data"]["data"] == {"battery": 0.5}
    assert ce["data"]["source"] == ingest.source
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", ce["data"]["received_at"])
    hdrs = dict(m.headers())
    tp = hdrs["traceparent"].decode()
    assert TRACEPARENT.match(tp)
    assert tp.split("-")[1] == parent.split("-")[1], "trace id must carry over"
    assert tp.split("-")[2] != parent.split("-")[2], "a new span id per hop"


def test_batch_gets_stable_ids_and_all_events_land(ingest, infra):
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    batch = [event("r-a"), event("r-b", etype="robot.fault"), event("r-c", etype="robot.status")]
    status, _, body, wid = post_webhook(base(ingest), ingest.source, ingest.secret, batch)
    assert status == 202, body
    assert json.loads(body) == {"accepted": 3, "ids": [f"{wid}-0", f"{wid}-1", f"{wid}-2"]}
    msgs = tail.collect(until=lambda m: len(m) >= 3)
    tail.close()
    got = sorted((m.key().decode(), json.loads(m.value())["id"]) for m in msgs)
    assert got == [("r-a", f"{wid}-0"), ("r-b", f"{wid}-1"), ("r-c", f"{wid}-2")]


def test_duplicate_webhook_id_is_not_produced_again(ingest, infra):
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    wid = "msg_" + uuid.uuid4().hex
    ev = event("r-dup")
    s1, _, b1, _ = post_webhook(base(ingest), ingest.source, ingest.secret, ev, wid=wid)
    assert s1 == 202, b1
    wait_for(lambda: redislib.Redis.from_url(infra["REDIS_URL"]).get(
        f"dedupe:{ingest.source}:{wid}") == b"done", 10, "dedupe key done")
    for _ in range(3):
        s, _, b, _ = post_webhook(base(ingest), ingest.source, ingest.secret, ev, wid=wid)
        assert s == 200 and json.loads(b) == {"duplicate": True}
    msgs = tail.collect(quiet=2.0, timeout=6)
    tail.close()
    assert [json.loads(m.value())["id"] for m in msgs] == [f"{wid}-0"]
    _, _, metrics = ingest.get("/metrics")
    assert f'webhook_duplicates_total{{source="{ingest.source}"}} 3' in metrics.decode()


def test_signature_computed_by_openssl_cli(ingest):
    """A test vector made by `openssl dgst`, not by any code of ours."""
    body = json.dumps(event("r-openssl")).encode()
    wid, ts = "msg_openssl_" + uuid.uuid4().hex[:8], str(int(time.time()))
    import base64
    key_hex = base64.b64decode(ingest.secret[6:]).hex()
    out = subprocess.run(["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt",
                          f"hexkey:{key_hex}", "-binary"],
                         input=f"{wid}.{ts}.".encode() + body, capture_output=True, check=True)
    sig = "v1," + base64.b64encode(out.stdout).decode()
    status, _, rb = http("POST", f"{base(ingest)}/v1/webhooks/{ingest.source}", body=body,
                         headers={"Content-Type": "application/json", "webhook-id": wid,
                                  "webhook-timestamp": ts, "webhook-signature": sig})
    assert status == 202, rb


def test_secret_rotation_and_expiry(service, infra):
    src, old, new, expired = unique_source(), new_secret(), new_secret(), new_secret()
    past = int(time.time() * 1000) - 1000
    register_source(infra["REDIS_URL"], src, [new, old, (expired, past)])
    svc = service("webhook-ingest").wait_ready()
    u = base(svc)
    assert post_webhook(u, src, new, event())[0] == 202
    assert post_webhook(u, src, old, event())[0] == 202
    status, _, body, _ = post_webhook(u, src, expired, event())
    assert status == 401 and problem(body)["field"] == "webhook-signature"
    # several signatures: any valid one passes, unknown versions are skipped
    body = json.dumps(event()).encode()
    wid, ts = "msg_" + uuid.uuid4().hex, str(int(time.time()))
    good = sign_standard(new, wid, ts, body)
    bad = sign_standard(new_secret(), wid, ts, body)
    hdr = f"v2,{good[3:]} {bad} {good}"
    status, _, rb = http("POST", f"{u}/v1/webhooks/{src}", body=body,
                         headers={"Content-Type": "application/json", "webhook-id": wid,
                                  "webhook-timestamp": ts, "webhook-signature": hdr})
    assert status == 202, rb
    status, _, rb = http("POST", f"{u}/v1/webhooks/{src}", body=body,
                         headers={"Content-Type": "application/json", "webhook-id": wid + "x",
                                  "webhook-timestamp": ts, "webhook-signature": f"v2,{good[3:]}"})
    assert status == 401


@pytest.mark.parametrize("case", ["wrong_secret", "tampered", "stale", "future", "no_signature",
                                  "no_timestamp", "bad_timestamp"])
def test_signature_failures_are_401(ingest, infra, case):
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    body = json.dumps(event("r-sig")).encode()
    wid, now = "msg_" + uuid.uuid4().hex, int(time.time())
    ts = {"stale": now - 301, "future": now + 301}.get(case, now)
    secret = new_secret() if case == "wrong_secret" else ingest.secret
    headers = {"Content-Type": "application/json", "webhook-id": wid,
               "webhook-timestamp": str(ts),
               "webhook-signature": sign_standard(secret, wid, str(ts), body)}
    if case == "tampered":
        body = body.replace(b"r-sig", b"r-siG")
    if case == "no_signature":
        del headers["webhook-signature"]
    if case == "no_timestamp":
        del headers["webhook-timestamp"]
    if case == "bad_timestamp":
        headers["webhook-timestamp"] = "yesterday"
    status, h, rb = http("POST", f"{base(ingest)}/v1/webhooks/{ingest.source}", body=body,
                         headers=headers)
    assert status == 401, rb
    assert h["Content-Type"] == "application/problem+json"
    doc = problem(rb)
    expected_field = {"stale": "webhook-timestamp", "future": "webhook-timestamp",
                      "no_timestamp": "webhook-timestamp",
                      "bad_timestamp": "webhook-timestamp"}.get(case, "webhook-signature")
    assert doc["field"] == expected_field
    assert tail.collect(quiet=1.5, timeout=4) == []
    tail.close()


def test_timestamp_within_tolerance_is_accepted(ingest):
    now = int(time.time())
    assert post_webhook(base(ingest), ingest.source, ingest.secret, event(), ts=now - 290)[0] == 202
    assert post_webhook(base(ingest), ingest.source, ingest.secret, event(), ts=now + 290)[0] == 202


def test_github_scheme(service, infra):
    src, secret = unique_source(), "gh-secret-" + uuid.uuid4().hex
    register_source(infra["REDIS_URL"], src, [secret], scheme="github-sha256")
    svc = service("webhook-ingest").wait_ready()
    body = json.dumps(event("r-gh", id="gh-1")).encode()
    url = f"{base(svc)}/v1/webhooks/{src}"
    status, _, rb = http("POST", url, body=body, headers={
        "Content-Type": "application/json", "X-Signature-256": sign_github(secret, body)})
    assert status == 202, rb
    status, _, rb = http("POST", url, body=body + b" ", headers={
        "Content-Type": "application/json", "X-Signature-256": sign_github(secret, body)})
    assert status == 401 and problem(rb)["field"] == "X-Signature-256"
    status, _, rb = http("POST", url, body=body, headers={"Content-Type": "application/json"})
    assert status == 401 and problem(rb)["field"] == "X-Signature-256"
    # the single event's id dedupes when there is no delivery id (once its claim is "done":
    # a retry while it is still pending gets 409 + Retry-After)
    wait_for(lambda: redislib.Redis.from_url(infra["REDIS_URL"]).get(f"dedupe:{src}:gh-1") == b"done",
             10, "dedupe key done")
    status, _, rb = http("POST", url, body=body, headers={
        "Content-Type": "application/json", "X-Signature-256": sign_github(secret, body)})
    assert status == 200 and json.loads(rb) == {"duplicate": True}


def test_unknown_source_404(ingest):
    status, h, body, _ = post_webhook(base(ingest), "no-such-source", ingest.secret, event())
    assert status == 404
    assert problem(body)["field"] == "source"
    status, _, body, _ = post_webhook(base(ingest), "Bad%20Id", ingest.secret, event())
    assert status == 404


def test_body_over_limit_413(ingest, tmp_path):
    """The server answers 413 before reading the body, so use curl, which reads it."""
    big = tmp_path / "big.json"
    big.write_bytes(b'{"pad":"' + b"x" * (1024 * 1024) + b'"}')
    out = subprocess.run(["curl", "-s", "-o", str(tmp_path / "resp"), "-w", "%{http_code} %{content_type}",
                          "-H", "Content-Type: application/json", "--data-binary", f"@{big}",
                          f"{base(ingest)}/v1/webhooks/{ingest.source}"],
                         capture_output=True, text=True, timeout=30)
    code, ctype = out.stdout.split(" ", 1)
    assert code == "413", out
    assert ctype == "application/problem+json"
    assert problem((tmp_path / "resp").read_bytes())["status"] == 413


def test_wrong_content_type_415(ingest):
    status, _, rb, _ = post_webhook(base(ingest), ingest.source, ingest.secret, event(),
                                    headers={"Content-Type": "text/plain"})
    assert status == 415 and problem(rb)["field"] == "Content-Type"
    status, _, rb, _ = post_webhook(base(ingest), ingest.source, ingest.secret, event(),
                                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 202, rb


@pytest.mark.parametrize("payload,field", [
    (b'{"type": "robot.heartbeat", ', "body"),
    (b'"just a string"', "body"),
    (b'[]', "body"),
    (json.dumps([{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z"},
                 {"type": "robot.heartbeat", "occurred_at": "2026-01-01T00:00:00Z"}]).encode(),
     "events[1].robot_id"),
    (json.dumps({"type": "robot.teleport", "robot_id": "a",
                 "occurred_at": "2026-01-01T00:00:00Z"}).encode(), "type"),
    (json.dumps({"type": "robot.fault", "robot_id": "a", "occurred_at": "yesterday"}).encode(),
     "occurred_at"),
    (json.dumps({"type": "robot.fault", "robot_id": "a b",
                 "occurred_at": "2026-01-01T00:00:00Z"}).encode(), "robot_id"),
    (json.dumps({"type": "robot.fault", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z",
                 "data": [1]}).encode(), "data"),
    (json.dumps([event(), event(), 7]).encode(), "events[2]"),
])
def test_invalid_body_400_names_field(ingest, payload, field):
    status, _, rb, _ = post_webhook(base(ingest), ingest.source, ingest.secret, None, body=payload)
    assert status == 400, rb
    doc = problem(rb)
    assert doc["field"] == field, doc
    assert field in doc["detail"] or field == "body"


@pytest.mark.parametrize("payload", [
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z",}',
    b'[{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z"},]',
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z", '
    b'"data": {"n": 01}}',
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z", '
    b'"data": {"s": "\xff\xfe"}}',
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z", '
    b'"data": {"s": "tab\there"}}',
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z", '
    b'"data": {"s": "\\udc00"}}',
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z"} x',
    b'{"type": "robot.heartbeat", "robot_id": "a", "occurred_at": "2026-01-01T00:00:00Z", '
    b'"data": ' + b'[' * 600 + b']' * 600 + b'}',
])
def test_malformed_json_anywhere_is_400_body(ingest, payload):
    """The body is checked strictly before any field: nothing half-valid reaches Kafka."""
    status, _, rb, _ = post_webhook(base(ingest), ingest.source, ingest.secret, None, body=payload)
    assert status == 400, rb
    doc = problem(rb)
    assert doc["field"] == "body" and "not valid JSON" in doc["detail"], doc


def test_event_bytes_reach_kafka_unchanged(ingest, infra):
    """Events are spliced, not re-printed: every value survives exactly, escapes included."""
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    first = (b'{ "typ\\u0065" : "robot.fault", "robot_id":"r-spl\\u0069ce",\n'
             b' "occurred_at":"2026-11-22T10:00:00Z", "id": "ev-splice-1",'
             b' "data": {"big": 12345678901234567890, "f": 1.50e3, "s": "caf\xc3\xa9 \\"q\\" \\ud83d\\ude00",'
             b' "nested": [true, false, null, {"k": []}]} }')
    body = b'[' + first + b', {"type":"robot.status","robot_id":"r-2",' \
        b'"occurred_at":"2026-11-22T10:00:01Z"}, {"type":"robot.booted","robot_id":"r-3",' \
        b'"occurred_at":"2026-11-22T10:00:02Z","data":{}}]'
    status, _, rb, wid = post_webhook(base(ingest), ingest.source, ingest.secret, None, body=body)
    assert status == 202, rb
    assert json.loads(rb)["ids"] == ["ev-splice-1", f"{wid}-1", f"{wid}-2"]
    msgs = tail.collect(until=lambda m: len(m) >= 3)
    tail.close()
    by_id = {json.loads(m.value())["id"]: m for m in msgs}
    m = by_id["ev-splice-1"]
    assert m.key() == b"r-splice"
    ce = json.loads(m.value())
    assert (ce["type"], ce["subject"], ce["time"]) == ("robot.fault", "r-splice",
                                                       "2026-11-22T10:00:00Z")
    # the exact number text is kept: no rounding through a double
    assert b'"big": 12345678901234567890' in m.value() and b'1.50e3' in m.value()
    sent = json.loads(first)
    data = ce["data"]
    assert data.pop("source") == ingest.source
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", data.pop("received_at"))
    assert data == sent
    assert data["data"]["s"] == "caf\u00e9 \"q\" \U0001F600"
    empty = json.loads(by_id[f"{wid}-2"].value())["data"]
    assert empty["data"] == {} and empty["source"] == ingest.source
    assert json.loads(by_id[f"{wid}-1"].value())["subject"] == "r-2"


def test_batch_too_large_400(service, infra, tmp_path):
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text((ROOT / "services/webhook-ingest/webhook-ingest.yaml").read_text()
                   .replace("max_batch: 500", "max_batch: 3"))
    svc = service("webhook-ingest", config=cfg).wait_ready()
    assert post_webhook(base(svc), src, secret, [event()] * 3)[0] == 202
    status, _, rb, _ = post_webhook(base(svc), src, secret, [event()] * 4)
    assert status == 400 and "batch limit of 3" in problem(rb)["detail"]


def test_method_not_allowed_405(ingest):
    status, h, _ = http("GET", f"{base(ingest)}/v1/webhooks/{ingest.source}")
    assert status == 405 and "POST" in h["Allow"]


def test_redis_down_still_accepts(service, infra, tmp_path):
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(tmp_path)]
    rs = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: redislib.Redis.from_url(url).ping(), 10, "private redis")
        src, secret = unique_source(), new_secret()
        register_source(url, src, [secret])
        svc = service("webhook-ingest", env={"REDIS_URL": url}).wait_ready()
        assert post_webhook(base(svc), src, secret, event())[0] == 202
        rs.terminate()
        rs.wait(10)
        tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
        statuses = [post_webhook(base(svc), src, secret, event("r-noredis"))[0] for _ in range(5)]
        assert statuses == [202] * 5
        msgs = tail.collect(until=lambda m: len(m) >= 5)
        tail.close()
        assert len(msgs) == 5
        text = svc.get("/metrics")[2].decode()
        m = re.search(r"^webhook_redis_degraded_total (\d+)", text, re.M)
        assert m and int(m.group(1)) >= 5, text
        assert svc.stop() == 0
    finally:
        rs.kill()
        rs.wait()


def test_metrics_cover_ingest(ingest):
    post_webhook(base(ingest), ingest.source, ingest.secret, event())
    post_webhook(base(ingest), ingest.source, new_secret(), event())
    text = ingest.get("/metrics")[2].decode()
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    s = ingest.source
    assert f'webhook_requests_total{{source="{s}",outcome="accepted"}} 1' in text
    assert f'webhook_rejected_total{{source="{s}",reason="bad_signature"}} 1' in text
    assert f'webhook_events_accepted_total{{source="{s}"}} 1' in text
    assert "webhook_produce_duration_seconds_count 1" in text
    assert "webhook_inflight_requests 0" in text


def load(url_base, source, secret, n, results, stop=None, threads=8, prefix="load"):
    """Sends n signed single-event webhooks; records (webhook id, status) per request."""
    def one(i):
        if stop is not None and stop.is_set():
            return
        ev = event(f"{prefix}-{i % 50}", id=f"{prefix}-{i}")
        try:
            st, _, _, wid = post_webhook(url_base, source, secret, ev, wid=f"{prefix}-{i}",
                                         timeout=30)
        except OSError:
            st = None
        results.append((f"{prefix}-{i}", st))
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(n)))


def event_ids_in_kafka(bootstrap, tail):
    tail.collect(quiet=3.0, timeout=60)
    return [json.loads(m.value())["id"] for m in tail.messages]


def test_kill_9_under_load_loses_no_accepted_event(service, infra):
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    svc = service("webhook-ingest").wait_ready()
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    results = []
    prefix = "k9-" + uuid.uuid4().hex[:6]
    t = threading.Thread(target=load, args=(base(svc), src, secret, 3000, results),
                         kwargs={"prefix": prefix})
    t.start()
    wait_for(lambda: sum(1 for _, s in results if s == 202) >= 200, 60, "load under way")
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)
    t.join(120)
    accepted = {wid for wid, s in results if s == 202}
    assert len(accepted) >= 200
    ids = set(event_ids_in_kafka(infra["KAFKA_BOOTSTRAP_SERVERS"], tail))
    tail.close()
    missing = accepted - ids
    assert not missing, f"{len(missing)} events answered 202 are not in Kafka: {sorted(missing)[:5]}"


def test_sigterm_under_load_answers_in_flight_and_exits_0(service, infra):
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    svc = service("webhook-ingest").wait_ready()
    tail = EventTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    results = []
    prefix = "term-" + uuid.uuid4().hex[:6]
    t = threading.Thread(target=load, args=(base(svc), src, secret, 2000, results),
                         kwargs={"prefix": prefix})
    t.start()
    wait_for(lambda: len(results) >= 200, 60, "load under way")
    assert svc.stop() == 0
    t.join(120)
    accepted = {wid for wid, s in results if s == 202}
    ids = set(event_ids_in_kafka(infra["KAFKA_BOOTSTRAP_SERVERS"], tail))
    tail.close()
    assert accepted <= ids
    assert all(s in (202, 503, None) for _, s in results), {s for _, s in results}
    assert svc.log_records()[-1]["message"] == "stopped"


def test_broker_down_gives_503_and_retries_land_exactly_once(service, infra, private_kafka):
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    svc = service("webhook-ingest",
                  env={"KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap}).wait_ready()
    tail = EventTail(private_kafka.bootstrap)
    results = []
    prefix = "bd-" + uuid.uuid4().hex[:6]
    stop = threading.Event()
    t = threading.Thread(target=load, args=(base(svc), src, secret, 1500, results),
                         kwargs={"prefix": prefix, "stop": stop, "threads": 16})
    t.start()
    wait_for(lambda: len(results) >= 100, 60, "load under way")
    private_kafka.stop()
    wait_for(lambda: any(s == 503 for _, s in results), 60, "503 while the broker is down")
    stop.set()
    t.join(120)
    unavailable = [r for r in results if r[1] == 503]
    assert unavailable, "no request saw the broker down"
    status, h, body, _ = post_webhook(base(svc), src, secret, event(), timeout=30)
    assert status == 503 and int(h["Retry-After"]) > 0, body

    private_kafka.start()
    svc.wait_ready(60)
    # the vendor retries everything that did not get a 2xx, with the same webhook ids
    status_by_id = dict(results)
    todo = [i for i in range(1500) if status_by_id.get(f"{prefix}-{i}") not in (202, 200)]
    for _ in range(20):
        retry = []
        load_results = []
        for i in todo:
            ev = event(f"{prefix}-{i % 50}", id=f"{prefix}-{i}")
            st = post_webhook(base(svc), src, secret, ev, wid=f"{prefix}-{i}", timeout=30)[0]
            if st not in (200, 202):
                retry.append(i)
            load_results.append(st)
        todo = retry
        if not todo:
            break
        time.sleep(1)
    assert not todo, f"{len(todo)} webhooks never accepted after the broker came back"
    tail.close()
    tail = EventTail(private_kafka.bootstrap)
    for p in tail.parts:
        p.offset = 0
    tail.c.assign(tail.parts)
    ids = event_ids_in_kafka(private_kafka.bootstrap, tail)
    tail.close()
    ours = [i for i in ids if i.startswith(prefix)]
    expected = {f"{prefix}-{i}" for i in range(1500)}
    assert set(ours) == expected
    dupes = len(ours) - len(set(ours))
    assert dupes == 0, f"{dupes} events landed twice"
    assert svc.stop() == 0


def test_message_timeout_must_end_before_the_pending_claim(service, tmp_path):
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text((ROOT / "services/webhook-ingest/webhook-ingest.yaml").read_text()
                   .replace("  properties: {}", "  properties: {message.timeout.ms: 90000}"))
    svc = service("webhook-ingest", config=cfg)
    assert svc.proc.wait(30) == 2
    out = svc.output()
    assert "message.timeout.ms" in out and "ingest.pending_ttl_s" in out

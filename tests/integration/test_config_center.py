"""config-center and the config client in libcommon, against real Redis and
real Apache Kafka: releases with compare-and-set, rollback, history, diff,
validation with paths, long-poll watch, secrets sealed at rest and masked,
audit, and a running webhook-ingest hot-reloading (Kafka, re-sync after a lost
message, cache file when Redis is down, bad documents refused)."""

import base64
import concurrent.futures
import hashlib
import json
import os
import time
import uuid

import pytest
import redis as redislib
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import free_port, http, wait_for
from ingest_helpers import event, new_secret, post_webhook, register_source, unique_source

INGEST_NS = "webhook-ingest"


def rds(infra):
    return redislib.Redis.from_url(infra["REDIS_URL"], decode_responses=True)


def wipe(r, ns):
    for k in r.scan_iter(f"config:{ns}:*"):
        r.delete(k)
    r.srem("config:namespaces", ns)


@pytest.fixture
def cc(service, infra, tmp_path):
    """A running config-center."""
    svc = service("config-center", env={"CONFIG_CACHE_DIR": str(tmp_path / "cc-cache")})
    svc.wait_ready()
    svc.tmp = tmp_path
    return svc


@pytest.fixture
def ns(infra):
    name = "t-" + uuid.uuid4().hex[:10]
    yield name
    wipe(rds(infra), name)


@pytest.fixture
def ingest_ns(infra):
    """The webhook-ingest and common namespaces, emptied before and after (other
    test files start webhook-ingest against the same Redis)."""
    r = rds(infra)
    for n in (INGEST_NS, "common"):
        wipe(r, n)
    yield INGEST_NS
    for n in (INGEST_NS, "common"):
        wipe(r, n)


def call(svc, method, path, body=None, headers=None, timeout=10):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    status, h, b = http(method, svc.url(path), body=body, headers=headers, timeout=timeout)
    return status, h, (json.loads(b) if b and b[:1] in (b"{", b"[") else b)


def put_draft(svc, ns, text, user="alice"):
    return call(svc, "PUT", f"/v1/namespaces/{ns}/draft", text,
                {"Content-Type": "application/yaml", "X-Consumer-Username": user})


def release(svc, ns, base, comment="c", user="alice"):
    return call(svc, "POST", f"/v1/namespaces/{ns}/releases", {"comment": comment},
                {"If-Match": f'"{base}"', "X-Consumer-Username": user})


def metric(svc, name, labels):
    _, _, body = svc.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return None


def plain_metric(svc, name):
    for line in svc.get("/metrics")[2].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_release_conflict_history_version_diff_rollback_audit(cc, ns, infra):
    st, _, b = put_draft(cc, ns, "ingest:\n  max_batch: 100\nlog:\n  level: info\n")
    assert st == 200 and b["base_version"] == 0 and b["draft"]["ingest"]["max_batch"] == 100
    st, h, b = release(cc, ns, 0, "first", user="alice")
    assert st == 201 and b["version"] == 1 and b["announced"] is True, b
    assert h["ETag"] == '"1"' and h["X-Config-Version"] == "1"
    doc = json.dumps({"ingest": {"max_batch": 100}, "log": {"level": "info"}}, separators=(",", ":"))
    assert b["checksum"] == hashlib.sha256(doc.encode()).hexdigest()

    put_draft(cc, ns, "ingest:\n  max_batch: 250\nlog:\n  level: debug\n", user="bob")
    st, _, b = release(cc, ns, 1, "second", user="bob")
    assert st == 201 and b["version"] == 2
    # someone released in between: the stale base is refused and nothing changes
    put_draft(cc, ns, "ingest:\n  max_batch: 999\n")
    st, _, b = release(cc, ns, 1)
    assert st == 412 and b["field"] == "If-Match" and "version 2" in b["detail"]
    assert rds(infra).hget(f"config:{ns}:released", "version") == "2"
    st, _, b = call(cc, "POST", f"/v1/namespaces/{ns}/releases", {"comment": "x"})
    assert st == 428 and b["field"] == "If-Match"

    st, h, b = cc.get(f"/v1/namespaces/{ns}")
    body = json.loads(b)
    assert st == 200 and body["version"] == 2 and body["config"]["ingest"]["max_batch"] == 250
    assert http("GET", cc.url(f"/v1/namespaces/{ns}"), headers={"If-None-Match": h["ETag"]})[0] == 304

    st, _, b = call(cc, "GET", f"/v1/namespaces/{ns}/releases")
    assert st == 200 and [r["version"] for r in b["releases"]] == [2, 1]
    assert [(r["author"], r["comment"]) for r in b["releases"]] == [("bob", "second"),
                                                                   ("alice", "first")]
    assert all(len(r["checksum"]) == 64 and r["time"] for r in b["releases"])
    st, _, b = call(cc, "GET", f"/v1/namespaces/{ns}/releases/1")
    assert st == 200 and b["config"] == {"ingest": {"max_batch": 100}, "log": {"level": "info"}}
    assert call(cc, "GET", f"/v1/namespaces/{ns}/releases/9")[0] == 404

    st, _, b = call(cc, "GET", f"/v1/namespaces/{ns}/diff?from=1&to=2")
    assert st == 200
    changes = {c["path"]: c for c in b["changes"]}
    assert changes["/ingest/max_batch"] == {"path": "/ingest/max_batch", "op": "changed",
                                            "from": 100, "to": 250}
    assert changes["/log/level"]["to"] == "debug"

    # rollback to version 1 is a new release; history is kept
    st, _, b = call(cc, "POST", f"/v1/namespaces/{ns}/rollback", {"to_version": 1},
                    {"X-Consumer-Username": "carol"})
    assert st == 201 and b["version"] == 3 and b["rollback_of"] == 1
    st, _, b = call(cc, "GET", f"/v1/namespaces/{ns}")
    assert b["version"] == 3 and b["config"]["ingest"]["max_batch"] == 100
    st, _, b = call(cc, "GET", f"/v1/namespaces/{ns}/releases")
    assert [r["version"] for r in b["releases"]] == [3, 2, 1]
    assert call(cc, "POST", f"/v1/namespaces/{ns}/rollback", {"to_version": 7})[0] == 400

    st, _, b = call(cc, "GET", f"/v1/audit?ns={ns}")
    acts = [(r["action"], r["author"]) for r in b["records"]]
    assert acts[:3] == [("rollback", "carol"), ("draft", "alice"), ("release", "bob")], acts
    assert ("draft", "bob") in acts and ("release", "alice") in acts
    st, _, b = call(cc, "GET", "/v1/namespaces")
    assert any(n["namespace"] == ns and n["version"] == 3 for n in b["namespaces"])


def test_validation_errors_name_the_path(cc, ns):
    st, _, b = put_draft(cc, ns, "ingest: [unclosed\n")
    assert st == 400 and b["field"] == "body" and "line" in b["detail"]
    assert put_draft(cc, ns, "- a list\n")[0] == 400
    schema = {"type": "object", "additionalProperties": False, "properties": {
        "ingest": {"type": "object", "properties": {
            "max_batch": {"type": "integer", "minimum": 1, "maximum": 10000}},
            "required": ["max_batch"]},
        "log": {"type": "object", "properties": {"level": {"enum": ["debug", "info"]}}}}}
    st, _, b = call(cc, "PUT", f"/v1/namespaces/{ns}/schema", schema)
    assert st == 200
    for text, field, detail in [
            ("ingest:\n  max_batch: 20000\n", "/ingest/max_batch", "must be <= 10000"),
            ("ingest:\n  max_batch: ten\n", "/ingest/max_batch", "type integer"),
            ("ingest: {}\n", "/ingest/max_batch", "is required"),
            ("log:\n  level: loud\n", "/log/level", "one of"),
            ("other: 1\n", "/other", "not an allowed property")]:
        st, _, b = put_draft(cc, ns, text)
        assert st == 422 and b["field"] == field and detail in b["detail"], (text, b)
    assert call(cc, "GET", f"/v1/namespaces/{ns}")[0] == 404  # nothing stored
    st, _, b = call(cc, "PUT", f"/v1/namespaces/{ns}/schema",
                    {"properties": {"a": {"pattern": "("}}})
    assert st == 422 and b["field"] == "/properties/a"
    assert call(cc, "PUT", "/v1/namespaces/Bad!/draft", "a: 1")[0] in (400, 404)


def test_watch_immediately_on_change_and_on_timeout(cc, ns):
    put_draft(cc, ns, "a: 1\n")
    assert release(cc, ns, 0)[0] == 201
    # newer than what the client has: answered at once
    t0 = time.monotonic()
    st, _, b = call(cc, "GET", f"/v1/watch?ns={ns}:0,other-ns:0&timeout=30")
    assert st == 200 and {"namespace": ns, "version": 1} in b and time.monotonic() - t0 < 2
    # up to date: held until a release
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        fut = pool.submit(call, cc, "GET", f"/v1/watch?ns={ns}:1&timeout=30", None, None, 40)
        time.sleep(1.0)
        assert not fut.done()
        put_draft(cc, ns, "a: 2\n")
        t_rel = time.monotonic()
        assert release(cc, ns, 1)[0] == 201
        st, _, b = fut.result(10)
        assert st == 200 and b == [{"namespace": ns, "version": 2}]
        assert time.monotonic() - t_rel < 1.0
    # nothing changes: 304 at the timeout (with at most 10% jitter)
    t0 = time.monotonic()
    st, _, _ = call(cc, "GET", f"/v1/watch?ns={ns}:2&timeout=2", timeout=10)
    took = time.monotonic() - t0
    assert st == 304 and 1.7 <= took < 3.5, took
    st, _, b = call(cc, "GET", "/v1/watch?ns=a:x")
    assert st == 400 and b["field"] == "ns"
    assert call(cc, "GET", f"/v1/watch?ns={ns}&timeout=61")[2]["field"] == "timeout"


def test_secrets_sealed_in_redis_masked_in_answers(cc, ns, infra):
    schema = {"type": "object", "properties": {"vendor": {"type": "object", "properties": {
        "token": {"type": "string", "x-secret": True, "minLength": 8}}}}}
    assert call(cc, "PUT", f"/v1/namespaces/{ns}/schema", schema)[0] == 200
    secret = "tok-" + uuid.uuid4().hex
    st, _, b = put_draft(cc, ns, f"vendor:\n  token: {secret}\n  url: http://x\n")
    assert st == 200 and b["draft"]["vendor"]["token"] == "******"
    assert release(cc, ns, 0)[0] == 201
    # "******" keeps the stored secret; only the url changes
    st, _, b = put_draft(cc, ns, "vendor:\n  token: '******'\n  url: http://y\n")
    assert st == 200, b
    assert release(cc, ns, 1)[0] == 201
    st, _, b = put_draft(cc, ns, "vendor:\n  token: short\n")
    assert st == 422 and b["field"] == "/vendor/token"
    assert secret not in json.dumps(b)

    r = redislib.Redis.from_url(infra["REDIS_URL"])
    for k in r.scan_iter(f"config:{ns}:*"):
        dump = r.dump(k) or b""
        assert secret.encode() not in dump, k
        assert secret not in json.dumps([x.decode(errors="replace") for x in r.lrange(k, 0, -1)]
                                        if r.type(k) == b"list" else [])
    stored = json.loads(r.hget(f"config:{ns}:released", "content"))
    sealed = stored["vendor"]["token"]
    assert sealed.startswith("v1:k1:")
    raw = base64.b64decode(sealed.split(":", 2)[2])
    plain = AESGCM(base64.b64decode(os.environ["SECRETS_KEY"])).decrypt(
        raw[:12], raw[12:], f"config:{ns}:/vendor/token".encode())
    assert json.loads(plain) == secret

    answers = [call(cc, "GET", f"/v1/namespaces/{ns}")[2],
               call(cc, "GET", f"/v1/namespaces/{ns}/releases/1")[2],
               call(cc, "GET", f"/v1/namespaces/{ns}/releases")[2],
               call(cc, "GET", f"/v1/namespaces/{ns}/diff?from=0&to=2")[2],
               call(cc, "GET", f"/v1/namespaces/{ns}/diff?from=1&to=2")[2],
               call(cc, "GET", f"/v1/audit?ns={ns}")[2]]
    for a in answers:
        assert secret not in json.dumps(a) and "v1:k1:" not in json.dumps(a), a
    assert answers[0]["config"]["vendor"] == {"token": "******", "url": "http://y"}
    # same secret in both versions: the diff shows only the url
    assert [c["path"] for c in answers[4]["changes"]] == ["/vendor/url"]
    assert secret not in cc.output()


def ingest_with_source(service, infra, tmp_path, env=None):
    src, secret = unique_source(), new_secret()
    register_source(infra["REDIS_URL"], src, [secret])
    e = {"CONFIG_CACHE_DIR": str(tmp_path / "ingest-cache"), "CONFIG_RESYNC_S": "30"}
    e.update(env or {})
    svc = service("webhook-ingest", env=e).wait_ready()
    svc.source, svc.secret = src, secret
    return svc


def test_running_service_hot_reloads_within_1s(cc, service, infra, tmp_path, ingest_ns):
    wi = ingest_with_source(service, infra, tmp_path)
    base = f"http://127.0.0.1:{wi.port}"
    assert post_webhook(base, wi.source, wi.secret, [event()] * 3)[0] == 202
    assert metric(wi, "config_version", f'namespace="{INGEST_NS}"') == 0

    put_draft(cc, INGEST_NS, "ingest:\n  max_batch: 2\nlog:\n  level: debug\nhttp:\n  threads: 7\n")
    t0 = time.monotonic()
    assert release(cc, INGEST_NS, 0)[0] == 201
    wait_for(lambda: metric(wi, "config_version", f'namespace="{INGEST_NS}"') == 1, 1.0,
             "config_version 1 in /metrics within 1 s")
    assert time.monotonic() - t0 < 1.0
    status, _, rb, _ = post_webhook(base, wi.source, wi.secret, [event()] * 3)
    assert status == 400 and "batch limit of 2" in json.loads(rb)["detail"]
    assert post_webhook(base, wi.source, wi.secret, [event()] * 2)[0] == 202
    recs = wi.log_records()
    restart = [r for r in recs if "needs restart" in r["message"]]
    assert [r["config.key"] for r in restart] == ["http.threads"]
    assert any(r["message"] == "log level is now 'debug'" for r in recs)

    # common namespace applies too; the service namespace wins over it
    put_draft(cc, "common", "ingest:\n  max_batch: 9\n  retry_after_s: 17\n")
    assert release(cc, "common", 0)[0] == 201
    wait_for(lambda: metric(wi, "config_version", 'namespace="common"') == 1, 2, "common applied")
    status, _, rb, _ = post_webhook(base, wi.source, wi.secret, [event()] * 3)
    assert status == 400 and "batch limit of 2" in json.loads(rb)["detail"]

    # a document the service's schema refuses is logged, not applied, version kept
    put_draft(cc, INGEST_NS, "ingest:\n  max_batch: 0\n")
    assert release(cc, INGEST_NS, 1)[0] == 201
    wait_for(lambda: any("released config refused" in r["message"] for r in wi.log_records()), 3,
             "refusal logged")
    assert metric(wi, "config_version", f'namespace="{INGEST_NS}"') == 1
    assert metric(wi, "config_reloads_total", f'namespace="{INGEST_NS}",outcome="refused"') == 1
    assert post_webhook(base, wi.source, wi.secret, [event()] * 2)[0] == 202
    # the cache file holds what was applied, never a refused version
    cache = json.loads((tmp_path / "ingest-cache" / "webhook-ingest.json").read_text())
    assert cache["namespaces"][INGEST_NS]["version"] == 1
    assert wi.stop() == 0


def test_lost_message_converges_by_resync(service, infra, tmp_path, ingest_ns):
    wi = ingest_with_source(service, infra, tmp_path, env={"CONFIG_RESYNC_S": "1"})
    content = json.dumps({"ingest": {"max_batch": 2}})
    # a release whose config.changes.v1 message never arrives
    rds(infra).hset(f"config:{INGEST_NS}:released", mapping={
        "version": 5, "content": content,
        "checksum": hashlib.sha256(content.encode()).hexdigest()})
    wait_for(lambda: metric(wi, "config_version", f'namespace="{INGEST_NS}"') == 5, 4,
             "re-sync applied version 5")
    base = f"http://127.0.0.1:{wi.port}"
    assert post_webhook(base, wi.source, wi.secret, [event()] * 3)[0] == 400


def test_redis_down_at_start_uses_cache_file(service, infra, tmp_path, ingest_ns):
    cache_env = {"CONFIG_CACHE_DIR": str(tmp_path / "ingest-cache")}
    content = json.dumps({"ingest": {"max_batch": 2}})
    rds(infra).hset(f"config:{INGEST_NS}:released", mapping={
        "version": 4, "content": content, "checksum": "x"})
    wi = ingest_with_source(service, infra, tmp_path)
    assert metric(wi, "config_version", f'namespace="{INGEST_NS}"') == 4
    assert wi.stop() == 0

    dead = f"redis://127.0.0.1:{free_port()}/0"
    wi2 = service("webhook-ingest", env=dict(cache_env, REDIS_URL=dead))
    wi2.wait_listening()
    assert metric(wi2, "config_version", f'namespace="{INGEST_NS}"') == 4
    assert any("using the config cache file" in r["message"] and r["log.level"] == "warn"
               for r in wi2.log_records())


def test_service_opens_sealed_values_with_its_key(cc, service, infra, tmp_path, ingest_ns):
    # a contrived schema marking log.level secret: the service must open it to apply it
    schema = {"properties": {"log": {"properties": {"level": {"type": "string",
                                                                "x-secret": True}}}}}
    assert call(cc, "PUT", f"/v1/namespaces/{INGEST_NS}/schema", schema)[0] == 200
    put_draft(cc, INGEST_NS, "log:\n  level: debug\n")
    content = rds(infra).hget(f"config:{INGEST_NS}:draft", "content")
    assert "debug" not in content
    assert release(cc, INGEST_NS, 0)[0] == 201
    wi = ingest_with_source(service, infra, tmp_path)
    assert metric(wi, "config_version", f'namespace="{INGEST_NS}"') == 1
    assert any(r["log.level"] == "debug" for r in wi.log_records())
    # without the key the sealed value does not open: refused, file config kept
    wi2 = service("webhook-ingest", env={"SECRETS_KEY": base64.b64encode(os.urandom(32)).decode(),
                                         "CONFIG_CACHE_DIR": str(tmp_path / "other")})
    wi2.wait_listening()
    assert metric(wi2, "config_version", f'namespace="{INGEST_NS}"') == 0
    assert any("sealed value does not open" in r["message"] for r in wi2.log_records())


def test_sigterm_answers_waiting_watchers_and_exits_0(cc, ns):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(call, cc, "GET", f"/v1/watch?ns={ns}:0&timeout=60", None, None, 30)
                for _ in range(8)]
        wait_for(lambda: plain_metric(cc, "config_watchers") == 8, 10, "8 watchers waiting")
        t0 = time.monotonic()
        assert cc.stop() == 0
        assert all(f.result(10)[0] == 304 for f in futs)
        assert time.monotonic() - t0 < 5
    cc.log_records()  # no sanitizer report

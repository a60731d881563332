"""robot-registry against real Redis, real Apache Kafka and a fake vendor
(fake_vendor.py): robot CRUD with ETags, validation, live state merge, cursor
pagination over 10k robots while robots are added, filters, optimistic
concurrency, sealed secrets (checked with Python's AES-GCM), wrong key,
secret rotation honoured by a running webhook-ingest, webhook registration and
sync against the fake vendor including its failures, and every change on
robot.registry.v1 (validated against proto/schemas/robot-registry-event.schema.json)."""

import base64
import concurrent.futures
import json
import os
import subprocess
import threading
import time
import uuid

import jsonschema
import pytest
import redis as redislib
import yaml
from confluent_kafka import Consumer, TopicPartition
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import ROOT, wait_for
from fake_vendor import FakeVendor
from ingest_helpers import event, post_webhook

TOPIC = "robot.registry.v1"
SCHEMA = json.loads((ROOT / "proto" / "schemas" / "robot-registry-event.schema.json").read_text())
ENVELOPE = json.loads((ROOT / "proto" / "schemas" / "cloudevent.schema.json").read_text())
JSONH = {"Content-Type": "application/json"}


class RegistryTail:
    """Reads robot.registry.v1 from the offsets it had when created."""

    def __init__(self, bootstrap, partitions=12):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-" + uuid.uuid4().hex,
                           "enable.auto.commit": False})
        parts = []
        for p in range(partitions):
            deadline = time.monotonic() + 20
            while True:
                try:
                    high = self.c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5)[1]
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            parts.append(TopicPartition(TOPIC, p, high))
        self.c.assign(parts)
        self.messages = []

    def collect(self, until, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.messages):
            m = self.c.poll(0.2)
            if m is not None and not m.error():
                self.messages.append(m)
        return self.messages

    def for_key(self, key):
        return [m for m in self.messages if m.key() == key.encode()]

    def close(self):
        self.c.close()


def validate_event(value):
    ce = json.loads(value)
    jsonschema.validate(ce, ENVELOPE)
    jsonschema.validate(ce["data"], SCHEMA)
    assert ce["type"] in SCHEMA["$defs"]["eventType"]["enum"]
    return ce


def write_config(tmp_path, **registry):
    doc = yaml.safe_load((ROOT / "services" / "robot-registry" / "robot-registry.yaml").read_text())
    doc["registry"].update(registry)
    path = tmp_path / f"registry-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def registry(service, tmp_path):
    cfg = write_config(tmp_path, secret_grace_s=3, vendor_timeout_ms=800, vendor_retries=1,
                       vendor_backoff_ms=20, sync_page_size=500)
    return service("robot-registry", config=cfg).wait_ready()


@pytest.fixture
def vendor():
    v = FakeVendor().start()
    yield v
    v.stop()


def jreq(svc, method, path, doc=None, headers=None):
    h = dict(JSONH)
    h.update(headers or {})
    body = None if doc is None else json.dumps(doc).encode()
    status, rh, rb = svc.request(method, path, body=body, headers=h)
    return status, rh, (json.loads(rb) if rb else None)


def robot_doc(**kw):
    d = {"name": "Picker", "model": "AX-200", "fleet": "east", "labels": {"site": "berlin"},
         "policy": {"auto_reboot": True, "modes": ["soft", "hard"]},
         "maintenance_window": {"cron": "0 2 * * 1-5", "duration_s": 3600}}
    d.update(kw)
    return d


def rid(prefix="r"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def open_sealed(sealed, aad):
    assert sealed.startswith("v1:k1:"), sealed[:10]
    raw = base64.b64decode(sealed[6:])
    key = base64.b64decode(os.environ["SECRETS_KEY"])
    return AESGCM(key).decrypt(raw[:12], raw[12:], aad.encode())


# ---- robots -------------------------------------------------------------------

def test_robot_crud_etags_identity_and_events(registry, infra):
    tail = RegistryTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    r = rid()
    s, h, doc = jreq(registry, "PUT", f"/v1/robots/{r}", robot_doc(),
                     {"X-Consumer-Username": "alice"})
    assert s == 201, doc
    assert h["ETag"] == '"1"' and h["Location"] == f"/v1/robots/{r}"
    assert doc["id"] == r and doc["version"] == 1 and doc["updated_by"] == "alice"
    assert doc["policy"] == {"auto_reboot": True, "modes": ["soft", "hard"]}
    assert doc["busy"] is False and doc["status"] == "unknown" and doc["source"] == ""

    # the same content again changes nothing
    s, h, again = jreq(registry, "PUT", f"/v1/robots/{r}", robot_doc())
    assert s == 200 and again["version"] == 1
    # create-only clashes
    s, _, p = jreq(registry, "PUT", f"/v1/robots/{r}", robot_doc(name="x"), {"If-None-Match": "*"})
    assert s == 409 and p["field"] == "id"

    s, h, got = jreq(registry, "GET", f"/v1/robots/{r}")
    assert s == 200 and got == doc and h["ETag"] == '"1"'

    s, h, patched = jreq(registry, "PATCH", f"/v1/robots/{r}", {"busy": True, "labels": {"zone": "b"}},
                         {"If-Match": '"1"', "X-Consumer-Username": "bob"})
    assert s == 200, patched
    assert patched["version"] == 2 and patched["busy"] is True and patched["updated_by"] == "bob"
    assert patched["labels"] == {"site": "berlin", "zone": "b"}  # merge patch
    assert patched["created_at"] == doc["created_at"]
    s, _, p = jreq(registry, "PATCH", f"/v1/robots/{r}", {"busy": False}, {"If-Match": '"1"'})
    assert s == 412 and p["field"] == "If-Match"
    s, _, p = jreq(registry, "PUT", f"/v1/robots/{r}", robot_doc(), {"If-Match": '"7"'})
    assert s == 412
    s, _, got = jreq(registry, "GET", f"/v1/robots/{r}")
    assert got["version"] == 2 and got["busy"] is True  # the refused writes wrote nothing

    s, _, _ = jreq(registry, "DELETE", f"/v1/robots/{r}", headers={"If-Match": '"1"'})
    assert s == 412
    s, _, body = jreq(registry, "DELETE", f"/v1/robots/{r}", headers={"If-Match": '"2"'})
    assert s == 204 and body is None
    s, _, p = jreq(registry, "GET", f"/v1/robots/{r}")
    assert s == 404 and p["field"] == "id"
    red = redislib.Redis.from_url(infra["REDIS_URL"])
    assert not red.exists(f"robot:{r}") and red.zscore("robots:all", r) is None
    assert red.zscore("robots:fleet:east", r) is None

    msgs = tail.collect(lambda ms: len([m for m in ms if m.key() == r.encode()]) >= 4)
    tail.close()
    mine = [m for m in msgs if m.key() == r.encode()]
    assert len(mine) == 4, [m.value() for m in mine]
    kinds = [json.loads(m.value())["type"] if m.value() else None for m in mine]
    assert kinds == ["robot.upserted", "robot.upserted", "robot.deleted", None]
    for m in mine[:3]:
        ce = validate_event(m.value())
        assert ce["subject"] == r and ce["source"] == "/robot-registry"
        assert "traceparent" in dict(m.headers())
    assert json.loads(mine[1].value())["data"]["version"] == 2
    deleted = json.loads(mine[2].value())["data"]
    assert deleted["deleted"] is True and deleted["version"] == 2
    assert mine[3].value() is None  # tombstone for compaction


@pytest.mark.parametrize("doc,field", [
    ({"fleet": "east"}, "name"),
    ({"name": "a"}, "fleet"),
    ({"name": "a", "fleet": "no spaces"}, "fleet"),
    ({"name": "a", "fleet": "e", "colour": "red"}, "colour"),
    ({"name": "a", "fleet": "e", "busy": "yes"}, "busy"),
    ({"name": "a", "fleet": "e", "labels": {"k": 1}}, "labels.k"),
    ({"name": "a", "fleet": "e", "policy": {"auto_reboot": True, "modes": ["warm"]}}, "policy.modes[0]"),
    ({"name": "a", "fleet": "e", "policy": {"auto_reboot": 1}}, "policy.auto_reboot"),
    ({"name": "a", "fleet": "e", "maintenance_window": {"cron": "0 25 * * *", "duration_s": 600}},
     "maintenance_window.cron"),
    ({"name": "a", "fleet": "e", "maintenance_window": {"cron": "0 2 * *", "duration_s": 600}},
     "maintenance_window.cron"),
    ({"name": "a", "fleet": "e", "maintenance_window": {"cron": "*/15 2 * * 1-5", "duration_s": 5}},
     "maintenance_window.duration_s"),
    ({"name": "a", "fleet": "e", "source": "Bad!"}, "source"),
    ({"name": "a", "fleet": "e", "id": "other"}, "id"),
])
def test_validation_names_the_field_and_writes_nothing(registry, infra, doc, field):
    r = rid()
    s, _, p = jreq(registry, "PUT", f"/v1/robots/{r}", doc)
    assert s == 400, p
    assert p["field"] == field, p
    assert {"type", "title", "status", "detail"} <= p.keys()
    assert not redislib.Redis.from_url(infra["REDIS_URL"]).exists(f"robot:{r}")


def test_bad_requests_are_problems(registry):
    s, h, b = registry.request("PUT", "/v1/robots/x", body=b"{", headers=JSONH)
    assert s == 400 and json.loads(b)["field"] == "body"
    s, _, b = registry.request("PUT", "/v1/robots/x", body=b"{}", headers={"Content-Type": "text/plain"})
    assert s == 415
    s, _, p = jreq(registry, "GET", "/v1/robots/bad%20id")
    assert s == 400 and p["field"] == "id"
    s, _, p = jreq(registry, "GET", "/v1/robots?limit=0")
    assert s == 400 and p["field"] == "limit"
    s, _, p = jreq(registry, "GET", "/v1/robots?fleet=a%20b")
    assert s == 400 and p["field"] == "fleet"
    s, _, p = jreq(registry, "PATCH", "/v1/robots/nobody-here", {"busy": True})
    assert s == 404
    s, _, p = jreq(registry, "PATCH", "/v1/robots/x", {"version": 3})
    assert s == 400 and p["field"] == "version"


def test_get_merges_live_state_mirror(registry, infra):
    r = rid()
    assert jreq(registry, "PUT", f"/v1/robots/{r}", robot_doc())[0] == 201
    s, _, doc = jreq(registry, "GET", f"/v1/robots/{r}")
    assert "state" not in doc
    red = redislib.Redis.from_url(infra["REDIS_URL"])
    red.hset(f"state:robot:{r}", mapping={"status": "offline",
                                          "last_heartbeat_at": "2026-11-22T10:00:00Z",
                                          "updated_at": "2026-11-22T10:05:00Z"})
    s, _, doc = jreq(registry, "GET", f"/v1/robots/{r}")
    assert s == 200
    assert doc["state"] == {"status": "offline", "last_heartbeat_at": "2026-11-22T10:00:00Z",
                            "updated_at": "2026-11-22T10:05:00Z"}
    assert doc["name"] == "Picker"


def test_concurrent_writes_with_same_version_one_wins(registry):
    r = rid()
    assert jreq(registry, "PUT", f"/v1/robots/{r}", robot_doc())[0] == 201

    def patch(i):
        return jreq(registry, "PATCH", f"/v1/robots/{r}", {"name": f"writer {i}"},
                    {"If-Match": '"1"'})[0]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(patch, range(8)))
    assert sorted(codes) == [200] + [412] * 7, codes
    _, _, doc = jreq(registry, "GET", f"/v1/robots/{r}")
    assert doc["version"] == 2

    # without If-Match concurrent writers all land, each on its own version
    def put(i):
        return jreq(registry, "PATCH", f"/v1/robots/{r}", {"model": f"m{i}"})[0]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(put, range(8)))
    assert codes == [200] * 8
    assert jreq(registry, "GET", f"/v1/robots/{r}")[2]["version"] == 10


def list_all(svc, query, limit):
    ids, cursor, pages = [], None, 0
    while True:
        q = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        s, _, doc = jreq(svc, "GET", f"/v1/robots?{q}")
        assert s == 200, doc
        ids += [x["id"] for x in doc["robots"]]
        cursor = doc["next_cursor"]
        pages += 1
        if not cursor:
            return ids, pages


def test_sync_10k_then_paginate_without_gaps_while_adding(registry, vendor, infra):
    src = "pg-" + uuid.uuid4().hex[:6]
    vendor.set_robots(10000, prefix=src, fleet=src)
    vendor.max_page = 1000
    s, _, doc = jreq(registry, "PUT", f"/v1/sources/{src}",
                     {"base_url": vendor.url, "api_token": vendor.token})
    assert s == 201, doc
    s, _, counts = jreq(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 200, counts
    assert counts["added"] == 10000 and counts["total"] == 10000
    red = redislib.Redis.from_url(infra["REDIS_URL"])
    assert red.zcard(f"robots:fleet:{src}") == 10000
    assert red.zcard(f"robots:source:{src}") == 10000

    stop = threading.Event()
    added = []

    def adder():
        i = 0
        while not stop.is_set():
            new = f"{src}-{i * 37 % 10000:05d}x"  # sorts between existing ids
            if jreq(registry, "PUT", f"/v1/robots/{new}", robot_doc(fleet=src))[0] == 201:
                added.append(new)
            i += 1
    t = threading.Thread(target=adder)
    t.start()
    try:
        ids, pages = list_all(registry, f"fleet={src}", 250)
    finally:
        stop.set()
        t.join()
    assert len(added) > 0
    assert len(ids) == len(set(ids)), "a robot appeared on two pages"
    assert ids == sorted(ids)
    originals = {r["id"] for r in vendor.robots}
    assert originals <= set(ids), f"{len(originals - set(ids))} robots skipped"
    assert pages >= 40

    # filters combine: fleet + status + source + q
    r = f"{src}-zz"
    s, _, doc = jreq(registry, "PUT", f"/v1/robots/{r}",
                     robot_doc(fleet=src, status="maintenance", name="Special One"))
    assert s == 201, doc
    s, _, doc = jreq(registry, "GET", f"/v1/robots?fleet={src}&status=maintenance")
    assert [x["id"] for x in doc["robots"]] == [r] and doc["next_cursor"] is None, doc
    ids, _ = list_all(registry, f"source={src}&status=online&q=robot%20999", 100)
    assert set(ids) == {f"{src}-{n:05d}" for n in [999] + list(range(9990, 10000))}
    # a search examines at most list_scan_budget ids per page: short pages, follow the cursor
    s, _, doc = jreq(registry, "GET", f"/v1/robots?fleet={src}&q=special")
    assert s == 200 and doc["robots"] == [] and doc["next_cursor"]
    ids, _ = list_all(registry, f"fleet={src}&q=special", 100)
    assert ids == [r]

    # the same sync again changes nothing; vendor-side changes are updates
    s, _, counts = jreq(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 200 and counts["unchanged"] == 10000 and counts["added"] == 0, counts


# ---- sources --------------------------------------------------------------------

def test_source_secrets_sealed_never_returned_and_events(registry, infra):
    tail = RegistryTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    src = "s-" + uuid.uuid4().hex[:8]
    s, h, doc = jreq(registry, "PUT", f"/v1/sources/{src}",
                     {"base_url": "http://127.0.0.1:9", "api_token": "tok-very-secret",
                      "signature_scheme": "github-sha256"}, {"X-Consumer-Username": "admin1"})
    assert s == 201, doc
    secret = doc["webhook_secret"]
    assert secret.startswith("whsec_") and doc["version"] == 1 and doc["updated_by"] == "admin1"
    s, _, got = jreq(registry, "GET", f"/v1/sources/{src}")
    text = json.dumps(got)
    assert s == 200 and "tok-very-secret" not in text and secret not in text
    assert "webhook_secret" not in got and got["has_api_token"] is True
    assert got["signature_scheme"] == "github-sha256"
    red = redislib.Redis.from_url(infra["REDIS_URL"])
    rec = {k.decode(): v.decode() for k, v in red.hgetall(f"source:{src}").items()}
    assert "tok-very-secret" not in json.dumps(rec) and secret not in json.dumps(rec)
    assert open_sealed(rec["api_token"], f"source:{src}:api_token") == b"tok-very-secret"
    secrets = json.loads(open_sealed(rec["webhook_secrets"], f"source:{src}:webhook_secrets"))
    assert secrets == [{"secret": secret}]
    assert rec["updated_by"] == "admin1" and red.sismember("sources", src)

    s, _, p = jreq(registry, "PUT", f"/v1/sources/{src}", {"base_url": "ftp://x"})
    assert s == 400 and p["field"] == "base_url"
    s, _, p = jreq(registry, "PUT", f"/v1/sources/{src}", {"base_url": "http://vendor.test", "signature_scheme": "md5"})
    assert s == 400 and p["field"] == "signature_scheme"
    s, _, p = jreq(registry, "PUT", "/v1/sources/new-one", {"base_url": "http://vendor.test"})
    assert s == 400 and p["field"] == "api_token"
    s, _, p = jreq(registry, "PUT", f"/v1/sources/{src}", {"base_url": "http://vendor.test"}, {"If-None-Match": "*"})
    assert s == 409
    s, _, p = jreq(registry, "PUT", f"/v1/sources/{src}", {"base_url": "http://vendor.test"}, {"If-Match": '"5"'})
    assert s == 412
    assert red.hget(f"source:{src}", "version") == b"1"

    s, _, _ = jreq(registry, "DELETE", f"/v1/sources/{src}")
    assert s == 204 and not red.exists(f"source:{src}") and not red.sismember("sources", src)
    assert jreq(registry, "GET", f"/v1/sources/{src}")[0] == 404
    msgs = tail.collect(lambda ms: len([m for m in ms if m.key() == src.encode()]) >= 2)
    tail.close()
    ces = [validate_event(m.value()) for m in msgs if m.key() == src.encode()]
    assert [c["type"] for c in ces] == ["source.updated", "source.deleted"]
    assert all(c["subject"] == src for c in ces)
    assert "tok-very-secret" not in json.dumps(ces) and secret not in json.dumps(ces)


def test_wrong_key_fails_cleanly(service, registry, tmp_path):
    src = "k-" + uuid.uuid4().hex[:8]
    assert jreq(registry, "PUT", f"/v1/sources/{src}",
                {"base_url": "http://127.0.0.1:9", "api_token": "t"})[0] == 201
    other = base64.b64encode(os.urandom(32)).decode()
    wrong = service("robot-registry", env={"SECRETS_KEY": other},
                    config=write_config(tmp_path)).wait_ready()
    s, _, p = jreq(wrong, "GET", f"/v1/sources/{src}")
    assert s == 500 and "SECRETS_KEY" in p["detail"]
    s, _, p = jreq(wrong, "POST", f"/v1/sources/{src}/secrets:rotate")
    assert s == 500
    assert jreq(registry, "GET", f"/v1/sources/{src}")[2]["version"] == 1  # untouched
    assert wrong.stop() == 0
    # no key at all outside dev mode: refuses to start
    nokey = service("robot-registry", env={"SECRETS_KEY": ""}, config=write_config(tmp_path))
    assert nokey.proc.wait(60) == 2
    assert "SECRETS_KEY" in nokey.output()
    dev = service("robot-registry", env={"SECRETS_KEY": ""},
                  config=write_config(tmp_path, dev_mode=True)).wait_ready()
    assert "dev mode" in dev.output()
    assert dev.stop() == 0


def test_rotation_grace_honoured_by_webhook_ingest(service, registry, infra):
    src = "rot-" + uuid.uuid4().hex[:8]
    s, _, doc = jreq(registry, "PUT", f"/v1/sources/{src}",
                     {"base_url": "http://127.0.0.1:9", "api_token": "t"})
    assert s == 201
    old = doc["webhook_secret"]
    ingest = service("webhook-ingest").wait_ready()
    base = f"http://127.0.0.1:{ingest.port}"
    assert post_webhook(base, src, old, event("r-rot"))[0] == 202

    s, _, rot = jreq(registry, "POST", f"/v1/sources/{src}/secrets:rotate")
    assert s == 200, rot
    new = rot["webhook_secret"]
    assert new != old and rot["version"] == 2
    assert len(rot["webhook_secrets"]) == 2 and rot["webhook_secrets"][0]["expires_at"] is None
    rotated_at = time.monotonic()
    # ingest reloads the source from the source.updated event: the new secret works at once
    wait_for(lambda: post_webhook(base, src, new, event("r-rot"))[0] == 202, 10, "new secret accepted")
    assert post_webhook(base, src, old, event("r-rot"))[0] == 202  # grace period (3 s)
    time.sleep(max(0.0, 3.5 - (time.monotonic() - rotated_at)))
    status, _, body, _ = post_webhook(base, src, old, event("r-rot"))
    assert status == 401, body
    assert post_webhook(base, src, new, event("r-rot"))[0] == 202
    # the next write drops the expired secret for good
    s, _, again = jreq(registry, "POST", f"/v1/sources/{src}/secrets:rotate")
    assert s == 200 and len(again["webhook_secrets"]) == 2
    assert ingest.stop() == 0


def test_webhook_registration_against_fake_vendor(registry, vendor, infra):
    src = "wh-" + uuid.uuid4().hex[:8]
    assert jreq(registry, "PUT", f"/v1/sources/{src}",
                {"base_url": vendor.url + "/", "api_token": vendor.token})[0] == 201
    red = redislib.Redis.from_url(infra["REDIS_URL"])

    vendor.unauthorized = True
    s, _, p = jreq(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 422 and p["field"] == "api_token"
    vendor.unauthorized = False
    vendor.fail_500 = -1
    n0 = len(vendor.calls)
    s, _, p = jreq(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 502, p
    assert len(vendor.calls) - n0 == 2  # first attempt + vendor_retries=1
    vendor.fail_500 = 0
    vendor.slow_s = 1.5
    s, _, p = jreq(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 504, p
    vendor.slow_s = 0
    assert red.hget(f"source:{src}", "version") == b"1", "failed registrations wrote nothing"
    assert not red.hexists(f"source:{src}", "webhook_id")

    # timed-out attempts may have created subscriptions we never learnt about (the vendor
    # API has no idempotency key for them): start from a clean vendor
    vendor.webhooks.clear()
    vendor.fail_500 = 1  # one 500, then the retry succeeds
    s, _, doc = jreq(registry, "POST", f"/v1/sources/{src}/webhook-registration",
                     headers={"X-Consumer-Username": "ops"})
    assert s == 201, doc
    (wid, hook), = vendor.webhooks.items()
    assert doc["webhook_subscription_id"] == wid and doc["version"] == 2
    assert hook["url"] == f"http://127.0.0.1:8081/v1/webhooks/{src}"
    assert "robot.heartbeat" in hook["event_types"] and "command.result" in hook["event_types"]
    assert vendor.calls[-1]["auth"] == f"Bearer {vendor.token}"
    assert hook["secret"] not in json.dumps(doc)
    rec = {k.decode(): v.decode() for k, v in red.hgetall(f"source:{src}").items()}
    secrets = json.loads(open_sealed(rec["webhook_secrets"], f"source:{src}:webhook_secrets"))
    assert secrets[0] == {"secret": hook["secret"]}
    assert "expires_at_ms" in secrets[1]  # the generated one is rotated out
    assert rec["webhook_id"] == wid and rec["updated_by"] == "ops"

    s, _, p = jreq(registry, "POST", f"/v1/sources/{src}/webhook-registration")
    assert s == 409 and p["field"] == "webhook_subscription_id"
    s, _, doc = jreq(registry, "DELETE", f"/v1/sources/{src}/webhook-registration")
    assert s == 200 and doc["webhook_subscription_id"] is None
    assert vendor.webhooks == {}
    assert not red.hexists(f"source:{src}", "webhook_id")
    s, _, p = jreq(registry, "DELETE", f"/v1/sources/{src}/webhook-registration")
    assert s == 404
    assert jreq(registry, "POST", "/v1/sources/nope-none/webhook-registration")[0] == 404


def test_sync_failures_write_nothing_and_updates_count(registry, vendor, infra):
    src = "sy-" + uuid.uuid4().hex[:8]
    vendor.set_robots(25, prefix=src, fleet=src)
    vendor.robots[3]["id"] = "bad id!"
    vendor.max_page = 10
    assert jreq(registry, "PUT", f"/v1/sources/{src}",
                {"base_url": vendor.url, "api_token": vendor.token})[0] == 201
    red = redislib.Redis.from_url(infra["REDIS_URL"])

    vendor.fail_on_page = 2  # the third page always fails: nothing may be written
    s, _, p = jreq(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 502, p
    assert red.zcard(f"robots:source:{src}") == 0
    vendor.fail_on_page = None
    vendor.unauthorized = True
    s, _, p = jreq(registry, "POST", f"/v1/sources/{src}/sync")
    assert s == 422 and p["field"] == "api_token"
    vendor.unauthorized = False
    vendor.slow_s = 1.5
    assert jreq(registry, "POST", f"/v1/sources/{src}/sync")[0] == 504
    vendor.slow_s = 0
    assert red.zcard(f"robots:source:{src}") == 0

    tail = RegistryTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    s, _, c = jreq(registry, "POST", f"/v1/sources/{src}/sync", headers={"X-Consumer-Username": "sync-bot"})
    assert s == 200, c
    assert (c["added"], c["updated"], c["unchanged"], c["invalid"]) == (24, 0, 0, 1)
    # registry-owned fields survive a sync; vendor-owned ones follow the vendor
    r5 = f"{src}-00005"
    jreq(registry, "PATCH", f"/v1/robots/{r5}", {"policy": {"auto_reboot": True, "modes": ["hard"]}})
    vendor.robots[5]["busy"] = True
    vendor.robots[6]["status"] = "fault"
    s, _, c = jreq(registry, "POST", f"/v1/sources/{src}/sync")
    assert (c["added"], c["updated"], c["unchanged"]) == (0, 2, 22), c
    _, _, doc = jreq(registry, "GET", f"/v1/robots/{r5}")
    assert doc["busy"] is True and doc["policy"]["modes"] == ["hard"]
    assert doc["source"] == src and doc["labels"] == {"site": "berlin"}
    assert red.zscore(f"robots:status:fault", f"{src}-00006") is not None
    assert red.zscore(f"robots:status:online", f"{src}-00006") is None
    msgs = tail.collect(lambda ms: len(ms) >= 27)
    tail.close()
    mine = [json.loads(m.value()) for m in msgs if m.key().decode().startswith(src)]
    assert len(mine) == 27  # 24 added, the PATCH, 2 updated
    for ce in mine:
        jsonschema.validate(ce["data"], SCHEMA)
    assert mine[0]["data"]["updated_by"] == "sync-bot"


# ---- outbox: no change lost when Kafka does not acknowledge it -------------------

OUTBOX = "registry:outbox"


def private_redis(infra, db):
    """The shared Redis server, another database: this test's outbox and lease alone."""
    url = infra["REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"
    red = redislib.Redis.from_url(url)
    red.flushdb()
    return url, red


def outbox_config(tmp_path):
    return write_config(tmp_path, publish_wait_ms=1500, outbox_lease_ms=2000, outbox_poll_ms=50)


def events_for(bootstrap, key, until, timeout=60):
    """Every robot.registry.v1 message of key from the start of the topic."""
    tail = RegistryTail(bootstrap)
    tail.c.assign([TopicPartition(TOPIC, p, 0) for p in range(12)])
    msgs = tail.collect(lambda ms: until([m for m in ms if m.key() == key.encode()]), timeout)
    tail.close()
    return [m for m in msgs if m.key() == key.encode()]


def stored_record(svc, r):
    s, _, got = jreq(svc, "GET", f"/v1/robots/{r}")
    assert s == 200, got
    got.pop("state", None)
    return got


def has_version(v):
    return lambda ms: any(m.value() and json.loads(m.value())["data"]["version"] == v for m in ms)


def test_change_while_broker_down_is_announced_when_it_is_back(service, infra, tmp_path,
                                                                private_kafka):
    url, red = private_redis(infra, 9)
    env = {"KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap, "REDIS_URL": url}
    svc = service("robot-registry", env=env, config=outbox_config(tmp_path)).wait_ready()
    r = rid("down")
    s, _, doc = jreq(svc, "PUT", f"/v1/robots/{r}", robot_doc())
    assert s == 201, doc
    wait_for(lambda: red.xlen(OUTBOX) == 0, 20, "first event relayed")

    private_kafka.stop()
    s, h, p = jreq(svc, "PATCH", f"/v1/robots/{r}", {"name": "changed while down"})
    assert s == 503 and int(h["Retry-After"]) > 0, p
    assert "outbox" in p["detail"]
    stored = stored_record(svc, r)
    assert stored["version"] == 2 and stored["name"] == "changed while down"
    entries = red.xrange(OUTBOX)
    assert len(entries) == 1 and entries[0][1][b"key"] == r.encode()
    assert json.loads(entries[0][1][b"value"])["data"] == stored
    # repeating the request is a no-op (same content), yet the event is not lost
    s, _, again = jreq(svc, "PATCH", f"/v1/robots/{r}", {"name": "changed while down"})
    assert s == 200 and again["version"] == 2

    private_kafka.start()
    mine = events_for(private_kafka.bootstrap, r, has_version(2), timeout=90)
    ces = [validate_event(m.value()) for m in mine]
    assert [c["data"]["version"] for c in ces][:2] == [1, 2], [c["data"] for c in ces]
    assert ces[-1]["data"] == stored  # exactly as stored
    assert "traceparent" in dict(mine[-1].headers())
    wait_for(lambda: red.xlen(OUTBOX) == 0, 20, "outbox drained after the broker came back")
    assert svc.stop() == 0


def test_kill_9_after_the_write_loses_no_event(service, infra, tmp_path):
    url, red = private_redis(infra, 10)
    cfg = outbox_config(tmp_path)
    env = {"REDIS_URL": url}
    # another replica holds the relay lease: this one stores but cannot produce yet
    red.set(OUTBOX + ":lease", "another-replica", px=4000)
    tail = RegistryTail(infra["KAFKA_BOOTSTRAP_SERVERS"])
    svc = service("robot-registry", env=env, config=cfg).wait_ready()
    r = rid("kill")
    s, _, p = jreq(svc, "PUT", f"/v1/robots/{r}", robot_doc(name="before the crash"))
    assert s == 503, p
    assert [e[1][b"key"] for e in red.xrange(OUTBOX)] == [r.encode()]
    svc.proc.kill()  # SIGKILL: nothing flushed, nothing released
    svc.proc.wait()
    assert red.xlen(OUTBOX) == 1
    tail.collect(lambda ms: False, timeout=1)
    assert not tail.for_key(r)  # the relay of this replica never held the lease

    again = service("robot-registry", env=env, config=cfg).wait_ready()
    tail.collect(lambda ms: len(tail.for_key(r)) >= 1, timeout=60)
    mine = tail.for_key(r)
    tail.close()
    assert len(mine) == 1, [m.value() for m in mine]
    ce = validate_event(mine[0].value())
    assert ce["type"] == "robot.upserted" and ce["data"] == stored_record(again, r)
    wait_for(lambda: red.xlen(OUTBOX) == 0, 20, "outbox drained")
    # a source change goes through the same outbox
    src = "o-" + uuid.uuid4().hex[:8]
    s, _, doc = jreq(again, "PUT", f"/v1/sources/{src}",
                     {"base_url": "http://127.0.0.1:9", "api_token": "t"})
    assert s == 201, doc
    assert red.xlen(OUTBOX) == 0
    assert again.stop() == 0

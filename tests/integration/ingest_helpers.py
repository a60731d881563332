"""Helpers for webhook-ingest tests, written independently of the C code:
sources are sealed into Redis with Python's AES-GCM (the documented layout in
proto/redis-keys.md), webhooks are signed with Python's hmac, and events are
read back from Kafka with confluent-kafka."""

import base64
import hashlib
import hmac
import json
import os
import time
import uuid

import redis
from confluent_kafka import Consumer, TopicPartition
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import http

EVENTS_TOPIC = "robot.events.v1"


def new_secret():
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def seal(key_b64, aad, plain):
    key = base64.b64decode(key_b64)
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plain, aad.encode())
    return "v1:k1:" + base64.b64encode(nonce + ct).decode()


def register_source(redis_url, source_id, secrets, scheme="standard-webhooks"):
    """secrets: list of str or (str, expires_at_ms)."""
    entries = []
    for s in secrets:
        if isinstance(s, tuple):
            entries.append({"secret": s[0], "expires_at_ms": s[1]})
        else:
            entries.append({"secret": s})
    key = os.environ["SECRETS_KEY"]
    r = redis.Redis.from_url(redis_url)
    r.hset(f"source:{source_id}", mapping={
        "id": source_id,
        "base_url": "http://127.0.0.1:9",
        "signature_scheme": scheme,
        "webhook_secrets": seal(key, f"source:{source_id}:webhook_secrets",
                                json.dumps(entries).encode()),
        "api_token": seal(key, f"source:{source_id}:api_token", b"token-" + os.urandom(4).hex().encode()),
        "version": 1,
    })
    r.sadd("sources", source_id)


def unique_source():
    return "src-" + uuid.uuid4().hex[:10]


def sign_standard(secret, wid, ts, body):
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sign_github(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event(robot_id="r-1", etype="robot.heartbeat", **extra):
    e = {"type": etype, "robot_id": robot_id, "occurred_at": "2026-11-22T10:00:00Z",
         "data": {"battery": 0.5}}
    e.update(extra)
    return e


def post_webhook(base_url, source, secret, payload, wid=None, ts=None, headers=None,
                 body=None, timeout=20):
    body = body if body is not None else json.dumps(payload).encode()
    wid = wid or "msg_" + uuid.uuid4().hex
    ts = str(int(time.time())) if ts is None else str(ts)
    h = {"Content-Type": "application/json", "webhook-id": wid, "webhook-timestamp": ts,
         "webhook-signature": sign_standard(secret, wid, ts, body)}
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    status, rh, rb = http("POST", f"{base_url}/v1/webhooks/{source}", body=body, headers=h,
                          timeout=timeout)
    return status, rh, rb, wid


class EventTail:
    """Reads robot.events.v1 from the offsets it had when created."""

    def __init__(self, bootstrap, partitions=12):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-" + uuid.uuid4().hex,
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        self.parts = []
        for p in range(partitions):
            self.parts.append(TopicPartition(EVENTS_TOPIC, p, self._high(p)))
        self.c.assign(self.parts)
        self.messages = []

    def _high(self, p):
        # freshly created topics may not have partition leaders for a moment
        deadline = time.monotonic() + 20
        while True:
            try:
                return self.c.get_watermark_offsets(TopicPartition(EVENTS_TOPIC, p), timeout=5)[1]
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def collect(self, until=None, timeout=15, quiet=2.0):
        """Reads until `until(messages)` holds, or no message for `quiet` s, or timeout."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            m = self.c.poll(0.2)
            if m is None:
                if until is None and time.monotonic() - last > quiet:
                    break
                if until is not None and until(self.messages):
                    break
                continue
            if m.error():
                continue
            last = time.monotonic()
            self.messages.append(m)
            if until is not None and until(self.messages):
                break
        return self.messages

    def events(self):
        return [json.loads(m.value()) for m in self.messages]

    def close(self):
        self.c.close()

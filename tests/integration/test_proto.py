"""The API contracts under proto/ are well formed and consistent: every file
parses, OpenAPI files are 3.1 with responses on every operation, every $ref
(local or relative-file) resolves, JSON Schemas are valid 2020-12, a CloudEvent
carrying a robot event validates (and broken ones do not), and the AsyncAPI
document declares exactly the platform's Kafka topics.

Needs only python3-yaml and python3-jsonschema; no services, no network."""

import json
import pathlib
import re
import urllib.parse

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
OPENAPI_DIR = PROTO / "openapi"
SCHEMA_DIR = PROTO / "schemas"
ASYNCAPI = PROTO / "asyncapi.yaml"

# ARCHITECTURE.md §3, topic table (key, compacted).
TOPICS = {
    "robot.events.v1": False,
    "robot.state.v1": True,
    "robot.commands.v1": False,
    "robot.command-status.v1": False,
    "robot.registry.v1": True,
    "config.changes.v1": True,
    "stream-processor.changelog.v1": True,
    "robot.events.dlq.v1": False,
}
ARCHITECTURE_CANDIDATES = [
    ROOT / "ARCHITECTURE.md",
    ROOT / "docs" / "ARCHITECTURE.md",
    ROOT.parent / "shared" / "ARCHITECTURE.md",
]
SERVICE_PORTS = {
    "webhook-ingest": 8081,
    "robot-registry": 8082,
    "reboot-command": 8083,
    "config-center": 8084,
    "stream-processor": 8085,
}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DATA_FILES = sorted(p for p in PROTO.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
OPENAPI_FILES = sorted(OPENAPI_DIR.glob("*.yaml"))
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.json"))


def rel(path):
    return str(pathlib.Path(path).relative_to(ROOT))


def load(path):
    path = pathlib.Path(path)
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".json":
            return json.load(f)
        return yaml.safe_load(f)


_cache = {}


def load_cached(path):
    path = pathlib.Path(path).resolve()
    if path not in _cache:
        _cache[path] = load(path)
    return _cache[path]


# ---- $ref resolution -------------------------------------------------------

def iter_refs(node, where="#"):
    """Yields (location, ref) for every string-valued "$ref" member."""
    if isinstance(node, dict):
        for k, v in node.items():
            loc = f"{where}/{str(k).replace('~', '~0').replace('/', '~1')}"
            if k == "$ref" and isinstance(v, str):
                yield where, v
            else:
                yield from iter_refs(v, loc)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_refs(v, f"{where}/{i}")


def follow_pointer(doc, pointer):
    """RFC 6901 JSON pointer (already URI-decoded) into doc; raises KeyError."""
    if pointer in ("", "/"):
        return doc if pointer == "" else doc[""]
    if not pointer.startswith("/"):
        raise KeyError(f"pointer {pointer!r} does not start with '/'")
    node = doc
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= len(node):
                raise KeyError(f"no index {token!r}")
            node = node[int(token)]
        elif isinstance(node, dict):
            if token not in node:
                raise KeyError(f"no member {token!r}")
            node = node[token]
        else:
            raise KeyError(f"cannot descend into {type(node).__name__} with {token!r}")
    return node


def resolve_ref(base_file, ref):
    """(target file, target node) for ref written in base_file; raises on failure."""
    parts = urllib.parse.urlsplit(ref)
    if parts.scheme or parts.netloc:
        raise ValueError("remote $ref (only local and relative-file refs are allowed)")
    target_file = pathlib.Path(base_file).resolve()
    if parts.path:
        target_file = (target_file.parent / urllib.parse.unquote(parts.path)).resolve()
        if not target_file.is_file():
            raise FileNotFoundError(f"no file {target_file}")
    doc = load_cached(target_file)
    return target_file, follow_pointer(doc, urllib.parse.unquote(parts.fragment))


def dangling_refs(path):
    """Every $ref in path that does not resolve, as 'location: ref (reason)'."""
    errors = []
    for where, ref in iter_refs(load_cached(path)):
        try:
            resolve_ref(path, ref)
        except (KeyError, ValueError, OSError, yaml.YAMLError, json.JSONDecodeError) as e:
            errors.append(f"{where}: {ref} ({e})")
    return errors


def deref(path, node, depth=0):
    """Follows node's $ref chain (if any) to the object it names: (file, node)."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        assert depth < 32, "$ref loop"
        path, node = resolve_ref(path, node["$ref"])
        depth += 1
    return path, node


# ---- every file -------------------------------------------------------------

def test_proto_has_the_expected_files():
    names = {rel(p) for p in DATA_FILES}
    expected = {f"proto/openapi/{s}.yaml" for s in SERVICE_PORTS} | {
        "proto/openapi/common.yaml",
        "proto/openapi/vendor-platform.yaml",
        "proto/openapi/robot-sim.yaml",
        "proto/asyncapi.yaml",
        "proto/schemas/cloudevent.schema.json",
        "proto/schemas/robot-event.schema.json",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", DATA_FILES, ids=rel)
def test_file_parses(path):
    doc = load(path)
    assert isinstance(doc, dict) and doc, f"{rel(path)}: top level is not a non-empty mapping"


@pytest.mark.parametrize("path", DATA_FILES, ids=rel)
def test_every_ref_resolves(path):
    errors = dangling_refs(path)
    assert not errors, f"{rel(path)}: dangling $ref:\n  " + "\n  ".join(errors)


def test_ref_checker_catches_dangling_refs(tmp_path):
    """The checker itself: good refs (with ~0/~1 escapes, %-encoding, other
    files) pass; each kind of dangling ref is reported."""
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({
        "paths": {"/a/{id}": {"get": {}}}, "defs": {"x~y": [1, {"z": 2}]},
    }))
    (tmp_path / "main.yaml").write_text(yaml.safe_dump({
        "ok": [
            {"$ref": "other.yaml#/paths/~1a~1{id}"},
            {"$ref": "other.yaml#/paths/~1a~1%7Bid%7D"},
            {"$ref": "other.yaml#/defs/x~0y/1/z"},
            {"$ref": "#/ok"},
            {"$ref": "other.yaml"},
        ],
        "bad": [
            {"$ref": "#/nothing"},
            {"$ref": "missing.yaml#/a"},
            {"$ref": "other.yaml#/paths/~1b"},
            {"$ref": "other.yaml#/defs/x~0y/5"},
            {"$ref": "other.yaml#defs"},
            {"$ref": "https://example.com/schema.json"},
        ],
    }))
    errors = dangling_refs(tmp_path / "main.yaml")
    assert len(errors) == 6, errors
    assert all(e.startswith("#/bad/") for e in errors), errors


# ---- OpenAPI ----------------------------------------------------------------

def operations(path, doc):
    """Yields (label, operation) for every operation under paths and webhooks,
    following path-item $refs into other files."""
    for section in ("paths", "webhooks"):
        for name, item in (doc.get(section) or {}).items():
            _, item = deref(path, item)
            for method in HTTP_METHODS:
                if method in item:
                    yield f"{section} {name} {method.upper()}", item[method]


@pytest.mark.parametrize("path", OPENAPI_FILES, ids=rel)
def test_openapi_document(path):
    doc = load_cached(path)
    assert re.fullmatch(r"3\.1\.\d+", str(doc.get("openapi"))), "openapi must be 3.1.x"
    info = doc.get("info") or {}
    assert isinstance(info.get("title"), str) and info["title"].strip(), "info.title"
    assert isinstance(info.get("version"), str) and info["version"].strip(), "info.version"
    assert "paths" in doc or "webhooks" in doc or "components" in doc
    ops = list(operations(path, doc))
    assert ops, f"{rel(path)} has no operations"
    seen = set()
    for label, op in ops:
        responses = op.get("responses")
        assert isinstance(responses, dict) and responses, f"{label}: no responses"
        for code in responses:
            assert re.fullmatch(r"[1-5]([0-9]{2}|XX)|default", str(code)), f"{label}: {code}"
        op_id = op.get("operationId")
        assert op_id and op_id not in seen, f"{label}: operationId missing or duplicated"
        seen.add(op_id)


# What each service serves today; a route added to a service is added here and
# to its OpenAPI file in the same change.
SERVED = {
    "webhook-ingest": {"paths /v1/webhooks/{source} POST"},
    "robot-registry": {"paths /v1/robots GET", "paths /v1/robots/{id} GET", "paths /v1/robots/{id} PUT",
                       "paths /v1/robots/{id} PATCH", "paths /v1/robots/{id} DELETE",
                       "paths /v1/sources GET", "paths /v1/sources/{id} GET", "paths /v1/sources/{id} PUT",
                       "paths /v1/sources/{id} DELETE", "paths /v1/sources/{id}/secrets:rotate POST",
                       "paths /v1/sources/{id}/webhook-registration POST",
                       "paths /v1/sources/{id}/webhook-registration DELETE",
                       "paths /v1/sources/{id}/sync POST"},
    "reboot-command": {"paths /v1/robots/{id}/reboot POST", "paths /v1/commands GET",
                       "paths /v1/commands/{id} GET", "paths /v1/commands/{id}/cancel POST",
                       "paths /v1/automation GET", "paths /v1/automation/resume POST"},
    "config-center": {"paths /v1/namespaces GET", "paths /v1/namespaces/{ns} GET",
                      "paths /v1/namespaces/{ns}/draft PUT", "paths /v1/namespaces/{ns}/schema PUT",
                      "paths /v1/namespaces/{ns}/releases POST",
                      "paths /v1/namespaces/{ns}/releases GET",
                      "paths /v1/namespaces/{ns}/releases/{v} GET",
                      "paths /v1/namespaces/{ns}/rollback POST",
                      "paths /v1/namespaces/{ns}/diff GET", "paths /v1/audit GET",
                      "paths /v1/watch GET"},
    "stream-processor": {"paths /v1/state/{robot_id} GET"},
}


@pytest.mark.parametrize("service,port", SERVICE_PORTS.items())
def test_service_openapi_describes_exactly_what_is_served(service, port):
    path = OPENAPI_DIR / f"{service}.yaml"
    doc = load_cached(path)
    assert [s["url"] for s in doc["servers"]] == [f"http://localhost:{port}"]
    assert len(doc["info"].get("description", "")) > 40, "info.description: the service's role"
    ops = dict(operations(path, doc))
    assert set(ops) == {"paths /healthz GET", "paths /readyz GET",
                        "paths /metrics GET"} | SERVED[service]
    assert set(ops["paths /readyz GET"]["responses"]) >= {"200", "503"}
    _, metrics_200 = deref(OPENAPI_DIR / "common.yaml",
                           ops["paths /metrics GET"]["responses"]["200"])
    assert "text/plain; version=0.0.4" in metrics_200["content"]


def test_common_components():
    common = OPENAPI_DIR / "common.yaml"
    doc = load_cached(common)
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "field"} <= set(problem["properties"])
    for name, resp in doc["components"]["responses"].items():
        assert "application/problem+json" in resp["content"], name
        assert "X-Request-ID" in resp["headers"], name
    for label, op in operations(common, doc):
        for code, resp in op["responses"].items():
            _, resp = deref(common, resp)
            assert "X-Request-ID" in resp.get("headers", {}), f"{label} {code}"


def openapi_schemas(path, doc):
    """Every Schema Object under components.schemas (2020-12 dialect in OpenAPI 3.1)."""
    for name, schema in ((doc.get("components") or {}).get("schemas") or {}).items():
        yield f"{rel(path)}#/components/schemas/{name}", schema


def test_vendor_platform_contract():
    path = OPENAPI_DIR / "vendor-platform.yaml"
    doc = load_cached(path)
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    ops = dict(operations(path, doc))
    assert set(ops) == {
        "paths /v1/robots GET", "paths /v1/robots/{id}/commands POST",
        "paths /v1/webhooks POST", "paths /v1/webhooks/{id} DELETE",
        "webhooks robotEvents POST",
    }
    cmd = ops["paths /v1/robots/{id}/commands POST"]
    key = [p for p in cmd["parameters"] if p.get("name") == "Idempotency-Key"]
    assert key and key[0]["required"] is True and key[0]["in"] == "header"
    assert {"202", "404", "409", "429", "5XX"} <= set(cmd["responses"])

    schemas = doc["components"]["schemas"]
    validator = schema_validator(schemas["WebhookBody"], base=path)
    event = {"type": "robot.fault", "robot_id": "r-1", "occurred_at": "2024-11-22T10:00:00Z",
             "data": {"code": "E42"}}
    assert not errors_of(validator, event)
    assert not errors_of(validator, [event, dict(event, type="command.ack", id="e2")])
    assert errors_of(validator, [])
    assert errors_of(validator, dict(event, type="robot.exploded"))
    assert errors_of(validator, {k: v for k, v in event.items() if k != "robot_id"})
    created = schema_validator(schemas["WebhookCreated"], base=path)
    assert not errors_of(created, {"id": "wh1", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La"})
    assert errors_of(created, {"id": "wh1", "secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2La"})


def sim_routes():
    """(METHOD, path) of every route robot-sim registers (tests/sim/api.c)."""
    src = (ROOT / "tests" / "sim" / "api.c").read_text()
    routes = re.findall(r'http_server_route\(\s*\w+\s*,\s*"([A-Z]+)"\s*,\s*"([^"]+)"', src)
    assert routes, "no http_server_route calls found in tests/sim/api.c"
    return {(m, p) for m, p in routes}


def test_robot_sim_describes_exactly_what_the_simulator_serves():
    """The simulator's /v1 routes are the vendor API (vendor-platform.yaml); its own
    admin routes (/healthz, /sim/...) are robot-sim.yaml, no more and no fewer."""
    served = sim_routes()
    vendor = {p for p in served if p[1].startswith("/v1/")}
    admin = served - vendor
    as_ops = lambda routes: {f"paths {p} {m}" for m, p in routes}
    vendor_path = OPENAPI_DIR / "vendor-platform.yaml"
    vendor_ops = {label for label, _ in operations(vendor_path, load_cached(vendor_path))}
    assert as_ops(vendor) == {label for label in vendor_ops if label.startswith("paths ")}
    path = OPENAPI_DIR / "robot-sim.yaml"
    doc = load_cached(path)
    ops = dict(operations(path, doc))
    assert set(ops) == as_ops(admin)
    assert {"paths /healthz GET", "paths /sim/stats GET", "paths /sim/misbehave GET",
            "paths /sim/misbehave POST"} <= set(ops)
    schemas = doc["components"]["schemas"]
    misbehave = {"vendor_500": 0.5, "slow_ms": 100, "duplicate_webhooks": 0, "out_of_order": 0,
                 "bad_signature": 1}
    assert not errors_of(schema_validator(schemas["Misbehave"], base=path), misbehave)
    update = schema_validator(schemas["MisbehaveUpdate"], base=path)
    assert not errors_of(update, {"slow_ms": 10})
    assert errors_of(update, {"vendor_500": 2})
    assert errors_of(update, {"teleport": 1})


# ---- JSON Schema ------------------------------------------------------------

def all_schemas():
    for path in SCHEMA_FILES:
        yield rel(path), load_cached(path)
    for path in OPENAPI_FILES:
        yield from openapi_schemas(path, load_cached(path))
    for name, schema in load_cached(ASYNCAPI)["components"]["schemas"].items():
        if "schemaFormat" in schema:
            if "draft-2020-12" in schema["schemaFormat"]:
                yield f"asyncapi.yaml#/components/schemas/{name}", schema["schema"]
        else:  # AsyncAPI default schema format: a JSON Schema draft-07 superset
            yield f"asyncapi.yaml#/components/schemas/{name}", schema


@pytest.mark.parametrize("name,schema", list(all_schemas()), ids=lambda x: x if isinstance(x, str) else "")
def test_schema_is_valid_2020_12(name, schema):
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=rel)
def test_schema_file_declares_2020_12(path):
    doc = load_cached(path)
    assert doc.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    assert path.name.endswith(".schema.json")


def schema_validator(schema, base):
    """A 2020-12 validator whose relative $refs resolve against file `base`,
    from the proto/ files (never the network)."""
    store = {}
    for p in DATA_FILES:
        store[p.resolve().as_uri()] = load_cached(p)
    # The referrer is the whole file, so "#/..." pointers in a sub-schema
    # (e.g. one under components.schemas) resolve against that file.
    resolver = jsonschema.RefResolver(base_uri=pathlib.Path(base).resolve().as_uri(),
                                      referrer=load_cached(base), store=store)
    return jsonschema.Draft202012Validator(schema, resolver=resolver,
                                           format_checker=jsonschema.FormatChecker())


def errors_of(validator, instance):
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


def robot_event_envelope():
    return {
        "specversion": "1.0",
        "id": "evt_01HV7Z3K9Q",
        "source": "/webhook-ingest/acme",
        "type": "robot.heartbeat",
        "subject": "r-0001",
        "time": "2024-11-22T10:00:00.120Z",
        "datacontenttype": "application/json",
        "data": {
            "id": "evt_01HV7Z3K9Q",
            "type": "robot.heartbeat",
            "robot_id": "r-0001",
            "occurred_at": "2024-11-22T10:00:00Z",
            "data": {"battery": 0.82},
            "source": "acme",
            "received_at": "2024-11-22T10:00:00.120Z",
        },
    }


def robot_event_message_validator():
    """The payload schema asyncapi.yaml gives robot.events.v1 messages."""
    doc = load_cached(ASYNCAPI)
    channel = next(c for c in doc["channels"].values() if c["address"] == "robot.events.v1")
    msgs = [deref(ASYNCAPI, m)[1] for m in channel["messages"].values()]
    assert len(msgs) == 1
    _, payload = deref(ASYNCAPI, msgs[0]["payload"])
    assert "draft-2020-12" in payload["schemaFormat"]
    return schema_validator(payload["schema"], base=ASYNCAPI)


def test_robot_event_cloudevent_validates():
    envelope = robot_event_envelope()
    assert not errors_of(schema_validator(load_cached(SCHEMA_DIR / "cloudevent.schema.json"),
                                          SCHEMA_DIR / "cloudevent.schema.json"), envelope)
    assert not errors_of(schema_validator(load_cached(SCHEMA_DIR / "robot-event.schema.json"),
                                          SCHEMA_DIR / "robot-event.schema.json"),
                         envelope["data"])
    assert not errors_of(robot_event_message_validator(), envelope)
    # id and data are optional in the vendor event; an offset time is fine
    minimal = robot_event_envelope()
    del minimal["data"]["id"], minimal["data"]["data"]
    minimal["data"]["occurred_at"] = "2024-11-22T11:00:00+01:00"
    assert not errors_of(robot_event_message_validator(), minimal)


def broken(mutate):
    ev = robot_event_envelope()
    mutate(ev)
    return ev


BROKEN = {
    "missing id": lambda ev: ev.pop("id"),
    "empty id": lambda ev: ev.update(id=""),
    "wrong specversion": lambda ev: ev.update(specversion="0.3"),
    "numeric specversion": lambda ev: ev.update(specversion=1.0),
    "missing source": lambda ev: ev.pop("source"),
    "bad time": lambda ev: ev.update(time="yesterday"),
    "wrong datacontenttype": lambda ev: ev.update(datacontenttype="text/plain"),
    "binary data": lambda ev: ev.update(data_base64="aGk="),
    "data without datacontenttype": lambda ev: ev.pop("datacontenttype"),
}
BROKEN_DATA = {
    "unknown event type": lambda ev: ev["data"].update(type="robot.exploded"),
    "missing robot_id": lambda ev: ev["data"].pop("robot_id"),
    "missing occurred_at": lambda ev: ev["data"].pop("occurred_at"),
    "occurred_at not RFC 3339": lambda ev: ev["data"].update(occurred_at="22/11/2024 10:00"),
    "missing source": lambda ev: ev["data"].pop("source"),
    "missing received_at": lambda ev: ev["data"].pop("received_at"),
    "data not an object": lambda ev: ev["data"].update(data="hello"),
    "envelope type not an event type": lambda ev: ev.update(type="something.else"),
    "no subject": lambda ev: ev.pop("subject"),
}


@pytest.mark.parametrize("what", BROKEN)
def test_broken_cloudevent_is_rejected(what):
    ev = broken(BROKEN[what])
    envelope = schema_validator(load_cached(SCHEMA_DIR / "cloudevent.schema.json"),
                                SCHEMA_DIR / "cloudevent.schema.json")
    assert errors_of(envelope, ev), f"{what} accepted by cloudevent.schema.json"
    assert errors_of(robot_event_message_validator(), ev), f"{what} accepted on robot.events.v1"


@pytest.mark.parametrize("what", BROKEN_DATA)
def test_broken_robot_event_is_rejected(what):
    ev = broken(BROKEN_DATA[what])
    assert errors_of(robot_event_message_validator(), ev), f"{what} accepted on robot.events.v1"


# ---- AsyncAPI -----------------------------------------------------------------

def architecture_topics():
    """Topic names from ARCHITECTURE.md §3's table, or None when the file is not here."""
    for path in ARCHITECTURE_CANDIDATES:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            section = text.split("## 3.", 1)[1].split("\n## ", 1)[0]
            return set(re.findall(r"^\|\s*`([a-z0-9.\-]+)`\s*\|", section, re.M))
    return None


def test_asyncapi_declares_exactly_the_platform_topics():
    doc = load_cached(ASYNCAPI)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    addresses = [c["address"] for c in doc["channels"].values()]
    assert len(addresses) == len(set(addresses)), "a topic is declared twice"
    assert set(addresses) == set(TOPICS)

    from_doc = architecture_topics()
    if from_doc is not None:
        assert from_doc == set(TOPICS), "ARCHITECTURE.md §3 and this test disagree"
    header = (ROOT / "libcommon" / "include" / "topics.h").read_text(encoding="utf-8")
    assert set(re.findall(r'#define\s+TOPIC_\w+\s+"([^"]+)"', header)) == set(TOPICS)


def test_asyncapi_channels_and_operations():
    doc = load_cached(ASYNCAPI)
    sends, receives = {}, {}
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), op_id
        assert op.get("tags"), f"{op_id}: no service tag"
        _, channel = deref(ASYNCAPI, op["channel"])
        for m in op.get("messages", []):
            assert m["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), \
                f"{op_id}: message not from its channel"
        (sends if op["action"] == "send" else receives).setdefault(channel["address"], []).append(op_id)

    for cid, channel in doc["channels"].items():
        topic = channel["address"]
        assert sends.get(topic), f"{topic}: no producer"
        kafka = channel["bindings"]["kafka"]
        assert kafka["topic"] == topic
        policy = kafka["topicConfiguration"]["cleanup.policy"]
        assert ("compact" in policy) == TOPICS[topic], f"{topic}: compaction"
        assert channel["messages"], f"{topic}: no messages"
        for m in channel["messages"].values():
            _, msg = deref(ASYNCAPI, m)
            assert msg["bindings"]["kafka"]["key"]["description"], f"{topic}: key"
            headers = msg.get("headers")
            for trait in msg.get("traits", []):
                _, trait = deref(ASYNCAPI, trait)
                headers = headers or trait.get("headers")
                assert trait.get("contentType", "application/cloudevents+json") \
                    == "application/cloudevents+json"
            _, headers = deref(ASYNCAPI, headers)
            assert "traceparent" in headers["required"], f"{topic}: traceparent header"
            _, payload = deref(ASYNCAPI, msg["payload"])
            base, schema = deref(ASYNCAPI, payload["schema"])
            refs = {r for _, r in iter_refs(schema)} | {schema.get("$ref")}
            assert base.name == "cloudevent.schema.json" or any(
                r and "cloudevent.schema.json" in r for r in refs), \
                f"{topic}: payload is not a CloudEvent"
    for topic in ("robot.events.v1", "robot.command-status.v1", "robot.registry.v1",
                  "config.changes.v1"):
        assert receives.get(topic), f"{topic}: no consumer"


def test_asyncapi_examples_validate():
    doc = load_cached(ASYNCAPI)
    checked = 0
    for name, msg in doc["components"]["messages"].items():
        _, payload = deref(ASYNCAPI, msg["payload"])
        validator = schema_validator(payload["schema"], base=ASYNCAPI)
        for ex in msg.get("examples", []):
            assert not errors_of(validator, ex["payload"]), f"{name} example {ex.get('name')}"
            checked += 1
    assert checked

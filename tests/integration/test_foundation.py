"""Every service binary comes up against real Redis + Apache Kafka, reports
ready, serves valid Prometheus metrics and ECS logs, refuses bad config with
file:line, reports broken dependencies on /readyz, and exits 0 on SIGTERM."""

import json
import re
import os
import shutil
import signal
import subprocess
import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import ROOT, SERVICES, BUILD, free_port, http, wait_for

ECS_FIELDS = ("@timestamp", "log.level", "message", "ecs.version", "service.name")
TOPICS = {
    "robot.events.v1": False, "robot.state.v1": True, "robot.commands.v1": False,
    "robot.command-status.v1": False, "robot.registry.v1": True, "config.changes.v1": True,
    "stream-processor.changelog.v1": True, "robot.events.dlq.v1": False,
}


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_lifecycle(service, name):
    svc = service(name).wait_ready()

    status, _, body = svc.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, doc = svc.readyz()
    assert status == 200
    # the runtime's four checks, plus any a service adds for its own dependencies
    assert {"config", "redis", "kafka", "topics"} <= doc["checks"].keys()
    assert all(doc["checks"].values()), doc

    status, headers, body = svc.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = body.decode()
    assert f'robotfleet_build_info{{service="{name}"' in text
    assert "process_resident_memory_bytes" in text
    assert 'http_requests_total{route="/healthz",method="GET",code="200"}' in text

    status, headers, body = svc.get("/no/such/path")
    assert status == 404
    assert headers["Content-Type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 404 and problem["title"] and problem["detail"]
    status, headers, _ = svc.request("DELETE", "/healthz")
    assert status == 405 and "GET" in headers["Allow"]
    status, headers, _ = svc.get("/healthz", headers={"X-Request-ID": "req-abc-123"})
    assert headers["X-Request-ID"] == "req-abc-123"

    assert svc.stop() == 0
    recs = svc.log_records()
    assert recs, "no log lines"
    for r in recs:
        for f in ECS_FIELDS:
            assert f in r, f"missing {f} in {r}"
        assert r["service.name"] == name
    messages = [r["message"] for r in recs]
    assert any(m.startswith("started") for m in messages), messages
    assert messages[-1] == "stopped", messages


def test_topics_created_with_partitions_and_compaction(service, infra):
    service("robot-registry").wait_ready()
    admin = AdminClient({"bootstrap.servers": infra["KAFKA_BOOTSTRAP_SERVERS"]})
    md = admin.list_topics(timeout=10)
    for topic in TOPICS:
        assert topic in md.topics, f"{topic} missing"
        assert len(md.topics[topic].partitions) == 12
    resources = [ConfigResource("topic", t) for t in TOPICS]
    for res, fut in admin.describe_configs(resources).items():
        policy = fut.result(timeout=10)["cleanup.policy"].value
        assert (policy == "compact") == TOPICS[res.name], f"{res.name}: {policy}"


def test_bad_config_names_file_and_line(service, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("log:\n  level: info\nhttp:\n  prot: 8081\n")
    svc = service("webhook-ingest", config=cfg)
    rc = svc.proc.wait(20)
    assert rc == 2
    assert f"{cfg}:4:" in svc.output() and "http.prot" in svc.output()


def test_bad_value_names_file_and_line(service, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("http:\n  threads: lots\n")
    svc = service("config-center", config=cfg)
    assert svc.proc.wait(20) == 2
    assert f"{cfg}:2:" in svc.output() and "http.threads" in svc.output()


def test_bad_environment_override_is_named(service):
    svc = service("reboot-command", env={"HTTP_PORT": "eighty"})
    assert svc.proc.wait(20) == 2
    assert "HTTP_PORT" in svc.output()


def test_missing_config_file_is_named(service, tmp_path):
    svc = service("stream-processor", config=tmp_path / "nope.yaml")
    assert svc.proc.wait(20) == 2
    assert "nope.yaml" in svc.output()


def test_redis_down_means_not_ready_then_recovers(service, tmp_path):
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        svc = service("robot-registry", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        svc.wait_ready()
        redis.terminate()
        redis.wait(10)

        def redis_failing():
            status, doc = svc.readyz()
            return status == 503 and doc["checks"]["redis"] is False
        wait_for(redis_failing, 15, "readyz to report redis down")
        assert svc.get("/healthz")[0] == 200

        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        svc.wait_ready(30)
        assert svc.stop() == 0
    finally:
        redis.kill()
        redis.wait()


def test_kafka_unreachable_means_not_ready(service):
    svc = service("webhook-ingest", env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    svc.wait_listening(60)

    def kafka_failing():
        status, doc = svc.readyz()
        return status == 503 and doc["checks"]["kafka"] is False
    wait_for(kafka_failing, 20, "readyz to report kafka down")
    assert svc.stop() == 0


DEMO_WITHIN_S = 120  # `make run`: a demo reboot has gone the whole way within two minutes


def demo_reboot_succeeded(logs):
    """The reboot-command log line of a demo robot's command reaching succeeded, or None."""
    path = logs / "reboot-command.log"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if " -> succeeded" in rec.get("message", "") and rec.get("robot.id", "").startswith("robot-"):
            return rec
    return None


def run_platform(tmp_path, kafka, demo=False):
    """scripts/run-local.sh (what `make run` calls) brings all five services up;
    with demo, the demo fleet's silent robot is rebooted the whole way (its
    command `succeeded`, shown in the reboot-command log, and the simulator
    saw the reboot end) within DEMO_WITHIN_S of the start."""
    for port in SERVICES.values():
        status = None
        try:
            status = http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0]
        except OSError:
            pass
        assert status is None, f"port {port} is busy; cannot test make run"
    env = dict(os.environ, RUN_DIR=str(tmp_path / "run"), BUILD=BUILD)
    for k in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(k, None)
    log = open(tmp_path / "run.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen([str(ROOT / "scripts" / "run-local.sh"), "--kafka", kafka],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def all_ready():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            return all(http("GET", f"http://127.0.0.1:{p}/readyz", timeout=2)[0] == 200
                       for p in SERVICES.values())
        wait_for(all_ready, 120, "all five services ready")
        env_file = (tmp_path / "run" / "env").read_text()
        assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in env_file
        assert "REDIS_URL=redis://127.0.0.1:" in env_file
        assert "WEBHOOK_INGEST_URL=http://127.0.0.1:8081" in env_file
        wait_for(lambda: "is running" in (tmp_path / "run.log").read_text(), 10, "banner")
        if demo:
            logs = tmp_path / "run" / "logs"

            def done():
                assert proc.poll() is None, (tmp_path / "run.log").read_text()
                return demo_reboot_succeeded(logs)
            rec = wait_for(done, max(1.0, DEMO_WITHIN_S - (time.monotonic() - started)),
                           "a demo reboot succeeded in the reboot-command log")
            wait_for(lambda: any(rec["command.id"] in ln and "reboot finished, result succeeded" in ln
                                 for ln in (logs / "robot-sim.log").read_text().splitlines()),
                     10, "the simulator's end of the same reboot")
            print(f"\nmake run demo: {rec['robot.id']} command {rec['command.id']} succeeded "
                  f"{time.monotonic() - started:.0f}s after the start")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(90)
    out = (tmp_path / "run.log").read_text()
    assert rc == 143, out
    assert "stopped" in out
    for port in SERVICES.values():
        with pytest.raises(OSError):
            http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)
    for name in SERVICES:
        log_text = (tmp_path / "run" / "logs" / f"{name}.log").read_text()
        last = json.loads(log_text.strip().splitlines()[-1])
        assert last["message"] == "stopped", f"{name}: {last}"


def test_make_run_embedded_broker(tmp_path):
    run_platform(tmp_path, "embedded", demo=True)


def test_make_run_apache_kafka(tmp_path):
    run_platform(tmp_path, "apache")


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_openapi_path_is_routed(service, name):
    """Each path in proto/openapi/<service>.yaml exists in the running service:
    an unlisted method answers 405 with Allow naming exactly the documented ones."""
    import yaml
    doc = yaml.safe_load((ROOT / "proto" / "openapi" / f"{name}.yaml").read_text())
    svc = service(name).wait_ready()
    methods = {"get", "put", "post", "delete", "patch"}
    for path, item in doc["paths"].items():
        if "$ref" in item:
            item = {"get": {}}  # the shared operational GET paths
        documented = {m.upper() for m in item if m in methods}
        probe = sorted(methods - {m.lower() for m in documented})[0].upper()
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        status, headers, body = svc.request(probe, concrete)
        assert status == 405, f"{name} {probe} {concrete}: {status} {body[:200]}"
        allowed = {m.strip() for m in headers["Allow"].split(",")} - {"HEAD"}
        assert allowed == documented, f"{name} {path}: Allow {allowed} vs OpenAPI {documented}"
    assert svc.stop() == 0


def test_gateway_identity_required_when_configured(service):
    token = "gw-" + "k" * 29
    svc = service("config-center", env={"GATEWAY_REQUIRE_IDENTITY": "true",
                                        "GATEWAY_TOKEN": token}).wait_ready()
    status, headers, body = svc.get("/v1/namespaces")
    assert status == 401
    assert json.loads(body)["field"] == "X-Gateway-Token"
    assert svc.get("/v1/namespaces", headers={"X-Gateway-Token": token[:-1] + "x"})[0] == 401
    assert svc.get("/v1/namespaces", headers={"X-Gateway-Token": token})[0] == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert svc.get(path)[0] == 200, path
    assert svc.stop() == 0


def test_gateway_identity_needs_a_real_token(service):
    svc = service("robot-registry", env={"GATEWAY_REQUIRE_IDENTITY": "true",
                                         "GATEWAY_TOKEN": "short"})
    assert svc.proc.wait(60) != 0
    assert "gateway.token" in svc.output()

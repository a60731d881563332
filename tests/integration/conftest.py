"""Shared fixtures for the integration tests: real Redis, real Apache Kafka and
the real service binaries started as processes (never mocks of our own code).

tests/run.sh starts Redis and Kafka and exports REDIS_URL and
KAFKA_BOOTSTRAP_SERVERS; run alone, pytest starts them itself."""

import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = os.environ.get("BUILD", "build-asan")
BIN = ROOT / BUILD / "bin"
SERVICES = {
    "webhook-ingest": 8081,
    "robot-registry": 8082,
    "reboot-command": 8083,
    "config-center": 8084,
    "stream-processor": 8085,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=10):
    """Returns (status, headers, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except AssertionError:
            raise
        except Exception as e:  # not up yet: connection refused, timeouts, ...
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ServiceProcess:
    """One service binary started with its example config and overrides."""

    def __init__(self, name, workdir, env=None, config=None):
        self.name = name
        self.port = free_port()
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.config = config or ROOT / "services" / name / f"{name}.yaml"
        self.env = dict(os.environ)
        self.env["HTTP_PORT"] = str(self.port)
        self.env.update(env or {})
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / self.name), "-c", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        return self

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, **kw):
        return http("GET", self.url(path), **kw)

    def request(self, method, path, body=None, headers=None):
        return http(method, self.url(path), body=body, headers=headers)

    def readyz(self):
        status, _, body = self.get("/readyz", timeout=3)
        return status, json.loads(body)

    def wait_listening(self, timeout=30):
        def up():
            assert self.proc.poll() is None, f"{self.name} exited: {self.output()[-2000:]}"
            return self.get("/healthz", timeout=2)[0] == 200
        wait_for(up, timeout, f"{self.name} /healthz")

    def wait_ready(self, timeout=60):
        def ready():
            assert self.proc.poll() is None, f"{self.name} exited: {self.output()[-2000:]}"
            return self.readyz()[0] == 200
        wait_for(ready, timeout, f"{self.name} /readyz")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=40):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout}s of {sig!r}")
        self.log.close()
        return rc

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self):
        """Every stdout line parsed as JSON (ECS); a non-JSON line fails the caller."""
        recs = []
        for line in self.output().splitlines():
            if not line.strip():
                continue
            if line.startswith(("=", "SUMMARY", "    #", "Direct leak", "Indirect leak")):
                raise AssertionError(f"sanitizer report in {self.name} output:\n{self.output()[-4000:]}")
            recs.append(json.loads(line))
        return recs


@pytest.fixture(scope="session")
def infra(tmp_path_factory):
    """REDIS_URL and KAFKA_BOOTSTRAP_SERVERS of a running Redis and Apache Kafka."""
    os.environ.setdefault("SECRETS_KEY", base64.b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONFIG_CACHE_DIR", str(tmp_path_factory.mktemp("config-cache")))
    if os.environ.get("REDIS_URL") and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield {"REDIS_URL": os.environ["REDIS_URL"],
               "KAFKA_BOOTSTRAP_SERVERS": os.environ["KAFKA_BOOTSTRAP_SERVERS"]}
        return
    run_dir = tmp_path_factory.mktemp("infra")
    env = dict(os.environ, RUN_DIR=str(run_dir))
    out = {}
    for script in ("redis-local.sh", "kafka-local.sh"):
        res = subprocess.run([str(ROOT / "scripts" / script), "start"], env=env,
                             capture_output=True, text=True, check=True)
        for line in res.stdout.splitlines():
            k, _, v = line.partition("=")
            out[k] = v
    os.environ.update(out)
    yield out
    for script in ("kafka-local.sh", "redis-local.sh"):
        subprocess.run([str(ROOT / "scripts" / script), "stop"], env=env, check=False)


@pytest.fixture
def service(infra, tmp_path):
    """Factory: service(name, env=..., config=...) -> started ServiceProcess."""
    started = []

    def make(name, env=None, config=None):
        p = ServiceProcess(name, tmp_path, env=env, config=config).start()
        started.append(p)
        return p

    yield make
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture
def private_kafka(tmp_path):
    """A broker of its own that the test may stop and restart (data kept)."""
    env = dict(os.environ, RUN_DIR=str(tmp_path / "kafka-run"), KAFKA_KEEP_DATA="1")
    script = str(ROOT / "scripts" / "kafka-local.sh")
    out = subprocess.run([script, "start"], env=env, capture_output=True, text=True, check=True)
    bootstrap = out.stdout.strip().splitlines()[-1].split("=", 1)[1]

    class Broker:
        def stop(self):
            subprocess.run([script, "stop"], env=env, check=True)

        def start(self):
            subprocess.run([script, "start"], env=env, check=True, capture_output=True)
    b = Broker()
    b.bootstrap = bootstrap
    yield b
    b.stop()

"""A fake robot vendor platform for the robot-registry tests (the parts of
proto/openapi/vendor-platform.yaml the registry calls): GET /v1/robots paged
with page_token/limit, POST /v1/webhooks -> 201 {id, secret},
DELETE /v1/webhooks/{id}; bearer-token auth. Runs in a thread on a free port.

Switches (attributes, change them at any time):
  fail_500      answer this many requests with 500 (then behave); -1 = always
  fail_on_page  answer 500 on GET /v1/robots pages with this index (0-based), always
  slow_s        sleep this long before answering
  unauthorized  answer 401 to everything
  max_page      the most robots one page returns, whatever limit asks
"""

import base64
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeVendor:
    def __init__(self, token="vendor-token"):
        self.token = token
        self.robots = []
        self.webhooks = {}
        self.calls = []
        self.fail_500 = 0
        self.fail_on_page = None
        self.slow_s = 0.0
        self.unauthorized = False
        self.max_page = 1000
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def set_robots(self, n, prefix="v", fleet="fleet-a", status="online"):
        self.robots = [{"id": f"{prefix}-{i:05d}", "name": f"robot {i}", "model": "AX-200",
                        "fleet": fleet, "status": status, "busy": False,
                        "labels": {"site": "berlin"}} for i in range(n)]

    def _handler(self):
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, doc=None, headers=None):
                body = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                ctype = "application/json" if status < 400 else "application/problem+json"
                if doc is not None:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _problem(self, status, detail):
                self._send(status, {"type": "about:blank", "status": status, "detail": detail})

            def _gate(self):
                """Records the call and applies the switches; True when handled."""
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                with vendor.lock:
                    vendor.calls.append({"method": self.command, "path": self.path,
                                         "auth": self.headers.get("Authorization"),
                                         "body": self.body})
                    fail = vendor.fail_500 != 0
                    if vendor.fail_500 > 0:
                        vendor.fail_500 -= 1
                if vendor.slow_s:
                    time.sleep(vendor.slow_s)
                if fail:
                    self._problem(500, "scripted failure")
                    return True
                if vendor.unauthorized or self.headers.get("Authorization") != f"Bearer {vendor.token}":
                    self._problem(401, "bad token")
                    return True
                return False

            def do_GET(self):
                if self._gate():
                    return
                u = urllib.parse.urlparse(self.path)
                if u.path != "/v1/robots":
                    return self._problem(404, "no such path")
                q = urllib.parse.parse_qs(u.query)
                limit = min(int(q.get("limit", ["100"])[0]), vendor.max_page)
                token = q.get("page_token", [""])[0]
                offset = json.loads(base64.urlsafe_b64decode(token))["offset"] if token else 0
                page_index = offset // limit if limit else 0
                if vendor.fail_on_page is not None and page_index == vendor.fail_on_page:
                    return self._problem(500, "scripted page failure")
                page = vendor.robots[offset:offset + limit]
                nxt = None
                if offset + limit < len(vendor.robots):
                    nxt = base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode()
                self._send(200, {"robots": page, "next_page_token": nxt})

            def do_POST(self):
                if self._gate():
                    return
                if self.path != "/v1/webhooks":
                    return self._problem(404, "no such path")
                try:
                    doc = json.loads(self.body)
                    assert isinstance(doc["url"], str) and doc["event_types"]
                except Exception:
                    return self._problem(400, "url and event_types required")
                wid = "wh_" + os.urandom(4).hex()
                secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
                with vendor.lock:
                    vendor.webhooks[wid] = {"url": doc["url"], "event_types": doc["event_types"],
                                            "secret": secret}
                self._send(201, {"id": wid, "secret": secret})

            def do_DELETE(self):
                if self._gate():
                    return
                prefix = "/v1/webhooks/"
                if not self.path.startswith(prefix):
                    return self._problem(404, "no such path")
                wid = urllib.parse.unquote(self.path[len(prefix):])
                with vendor.lock:
                    if vendor.webhooks.pop(wid, None) is None:
                        return self._problem(404, "no such webhook")
                self._send(204)

        return Handler

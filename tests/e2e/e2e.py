#!/usr/bin/env python3
"""End-to-end test of the whole pipeline, without containers, on one machine.

    vllm-sim  <--  llm-gateway  --events-->  events.jsonl  -->  log-shipper  -->  loki-receiver
        ^               ^                                          ^
        |               |                                          |
        +------- Prometheus (Debian package, the project's rule files, 5 s) ------+

Phases:
  1. quiet: steady low-rate traffic on every model; only `Watchdog` may be pending or firing.
  2. storms, concurrently, each on its own model (a control model keeps its quiet traffic):
     latency-spike, refusal-storm, error-storm. The expected alerts must go pending, then
     firing after their `for`; no other alert may appear.
  3. delivery: every request produced exactly one event, every event reached the receiver
     exactly once with the right stream labels and structured metadata, and the metrics
     Prometheus scraped agree with the events.
  4. shutdown: every process started here is stopped; the project's binaries exit 0.

The last line printed is `N passed, M failed`. Standard library + PyYAML (+ jsonschema when
available, for the event schema). Environment:
  E2E_BIN_DIR     directory of the built binaries (default: target/debug)
  PROMETHEUS      Prometheus binary (default: `prometheus` on PATH)
  E2E_FAST=1      development aid: short storms; alerts whose `for` exceeds the phase budget
                  only need to reach pending (never used by the test command)
  E2E_KEEP=1      keep the temporary directory (logs, events, received entries)
"""

from __future__ import annotations

import glob
import hashlib
import http.server
import threading
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("E2E_BIN_DIR", ROOT / "target" / "debug"))
RULES_GLOB = str(ROOT / "logql-rules" / "prometheus" / "*.rules.yml")
EVENTS_SCHEMA = ROOT / "docs" / "events.schema.json"
AM_CONFIG = ROOT / "logql-rules" / "alertmanager" / "alertmanager.yml"
FAST = os.environ.get("E2E_FAST") == "1"
KEEP = os.environ.get("E2E_KEEP") == "1"

# Models: one per scenario, plus a control model that only ever gets quiet traffic.
CONTROL = "chat-control"
LAT = "chat-latency"
REF = "chat-refusal"
ERR = "chat-errors"
MODELS = [CONTROL, LAT, REF, ERR]
# A second vllm-sim (its own scrape target in job vllm), not behind the gateway: quiet
# traffic, then its engine dies (loadgen engine-death, straight at it).
DEAD = "chat-dead"

# Tenants and their API keys (the gateway config holds only the SHA-256).
TENANT_KEYS = {"team-a": "e2e-key-team-a", "team-b": "e2e-key-team-b"}
MODEL_TENANT = {CONTROL: "team-a", LAT: "team-a", REF: "team-b", ERR: "team-b"}

# Timings (seconds). Prometheus scrapes and evaluates every 5 s.
QUIET_SECS = 30 if FAST else 60
LAT_SECS = 90 if FAST else 200
ERR_SECS = 90 if FAST else 200
REF_SECS = 90 if FAST else 320
PHASE2_BUDGET = 150 if FAST else 450  # from the start of the storms to the last firing
POLL_SECS = 2.0

# Latency spike: long answers at a low decode speed, ~9 s per request (P95 lands in
# vLLM's (5, 10] bucket: histogram_quantile gives ~9.75 s > 8 s).
LAT_OUTPUT_TOKENS = 180
LAT_TOKENS_PER_SECOND = 20
# Every other answer ends naturally (finish_reason "stop") well under its max_tokens, so
# the truncation alert (share of finished_reason="length") sees a healthy fleet.
SHORT_ANSWER = ["--header", "x-sim-output-tokens: 16"]

# Alerts each scenario must fire: (alertname, label holding the model, model, scenario).
EXPECTED = [
    ("VllmP95LatencyHigh", "model_name", LAT, "latency-spike"),
    ("GatewayP95LatencyHigh", "model", LAT, "latency-spike"),
    ("GatewayRefusalRateHigh", "model", REF, "refusal-storm"),
    ("VllmRequestErrors", "model_name", ERR, "error-storm"),
    ("VllmErrorRateHigh", "model_name", ERR, "error-storm"),
    ("VllmErrorRateCritical", "model_name", ERR, "error-storm"),
    ("GatewayErrorRateHigh", "model", ERR, "error-storm"),
    ("GatewayErrorRateCritical", "model", ERR, "error-storm"),
]
# Alertmanager (the project's routes and inhibitions): warnings muted by a firing critical
# of the same `family` and model. Every other expected alert is delivered by severity.
INHIBITED = {("VllmErrorRateHigh", ERR), ("GatewayErrorRateHigh", ERR)}
RECEIVERS_BY_SEVERITY = {"critical": {"pagerduty", "slack-critical"}, "warning": {"slack-warning"},
                         "info": {"email-info"}}

# Alerts that may legitimately go pending (or fire) during a scenario, but need not.
TOLERATED = [
    # P95 of ~9 s requests lands just below 10 s; CPU contention can push it over.
    ("VllmRequestLatencySustainedHigh", "model_name", LAT, "latency-spike"),
]
# Alerts that may go pending but must never fire: warm-up artefacts of a fresh stack.
# None any more: VllmThroughputLow used to go pending for a few seconds as the storms began
# (rate()[5m] over series younger than 5 minutes reads too low); the throughput alerts now
# wait until the series cover their window, and the test asserts they never even go pending.
TOLERATED_PENDING: list[tuple[str, str, str, str]] = []


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def check(self, name: str, ok: bool, detail: str = "", why: str = "") -> bool:
        """`detail` is printed either way, `why` only on failure."""
        self.results.append((name, bool(ok), detail))
        if ok:
            print(f"PASS {name}" + (f" ({detail})" if detail else ""), flush=True)
        else:
            print(f"FAIL {name}: {'; '.join(x for x in (detail, why) if x)}", flush=True)
        return bool(ok)

    @property
    def passed(self) -> int:
        return sum(1 for _, ok, _ in self.results if ok)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.results if not ok)


class Abort(Exception):
    """A step the rest of the test depends on failed."""


class Terminated(Exception):
    """SIGTERM/SIGINT (for example from `timeout`)."""


def _on_signal(signum, _frame):
    raise Terminated(f"signal {signum}")


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class Proc:
    def __init__(self, name: str, argv: list[str], workdir: Path, own_logs: bool = True):
        self.name = name
        self.argv = argv
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        # Its own session = its own process group: stopping it never touches anything else.
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
            cwd=workdir,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.exit_code: int | None = None

    def running(self) -> bool:
        return self.p.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_listening(self, timeout: float, pattern: str = r"listening on (\S+)") -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.stderr_text())
            if m:
                return m.group(1)
            if not self.running():
                raise Abort(f"{self.name} exited with {self.p.returncode}: {self.stderr_text()[-2000:]}")
            time.sleep(0.05)
        raise Abort(f"{self.name} did not print {pattern!r} within {timeout}s")

    def stop(self, grace: float = 20.0) -> int | None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {grace}s: SIGKILL")
        # Whatever is left in its group (it should be empty).
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.exit_code = self.p.returncode
        self._out.close()
        self._err.close()
        return self.exit_code


class Procs:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.all: list[Proc] = []
        self.webhook: WebhookRecorder | None = None

    def start(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, [str(a) for a in argv], self.workdir)
        self.all.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.all):
            if p.exit_code is None:
                p.stop(grace=10.0)
        if self.webhook is not None:
            self.webhook.close()
            self.webhook = None


# ---------------------------------------------------------------------------
# HTTP helpers (loopback only)
# ---------------------------------------------------------------------------


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def prom_query(prom: str, expr: str) -> list[dict]:
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    data = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise Abort(f"query {expr!r}: HTTP {status} {body[:300]!r}")
    return data["data"]["result"]


def prom_alerts(prom: str) -> list[dict]:
    status, body = http_get(f"http://{prom}/api/v1/alerts")
    if status != 200:
        raise Abort(f"/api/v1/alerts: HTTP {status}")
    return json.loads(body)["data"]["alerts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    addr: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict, bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def parse_ts_ns(ts: str) -> int:
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(round(dt.timestamp() * 1000)) * 1_000_000


# ---------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------


def load_rules() -> dict[str, dict]:
    """Alert name -> {for_s, labels, file} from the project's Prometheus rule files."""
    alerts: dict[str, dict] = {}
    files = sorted(glob.glob(RULES_GLOB))
    if not files:
        raise Abort(f"no rule files match {RULES_GLOB}")
    for f in files:
        doc = yaml.safe_load(Path(f).read_text())
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                if "alert" in r:
                    alerts[r["alert"]] = {
                        "for_s": parse_duration(r.get("for", "0s")),
                        "labels": r.get("labels", {}),
                        "file": Path(f).name,
                        "group": g["name"],
                    }
    return alerts


def rule_groups() -> list[str]:
    names = []
    for f in sorted(glob.glob(RULES_GLOB)):
        doc = yaml.safe_load(Path(f).read_text())
        names += [g["name"] for g in doc.get("groups", [])]
    return names


def parse_duration(s: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+)(ms|s|m|h|d)", str(s)):
        total += int(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


def gateway_config(workdir: Path, sim: str, events: Path) -> Path:
    lines = [
        "# Generated by tests/e2e/e2e.py",
        "[server]",
        'listen = "127.0.0.1:0"',
        "shutdown_grace_secs = 10",
        "[events]",
        f'output = "{events}"',
        "[health]",
        "interval_ms = 2000",
        "[pools.vllm]",
        f'endpoints = ["http://{sim}"]',
    ]
    for m in MODELS:
        lines += [
            f'[models."{m}"]',
            'pool = "vllm"',
            "prompt_usd_per_million_tokens = 0.10",
            "completion_usd_per_million_tokens = 0.20",
        ]
    for tenant, key in TENANT_KEYS.items():
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines += [f'[tenants."{tenant}"]', f'api_key_sha256 = ["{digest}"]']
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def alertmanager_config(workdir: Path, webhook: str) -> Path:
    """The project's routes and inhibitions unchanged; each receiver's integrations replaced
    by a webhook to the local recorder (nothing leaves the machine, no secrets needed)."""
    src = yaml.safe_load(AM_CONFIG.read_text())
    cfg = {
        "global": {"resolve_timeout": src.get("global", {}).get("resolve_timeout", "5m")},
        "route": src["route"],
        "inhibit_rules": src.get("inhibit_rules", []),
        "receivers": [
            {"name": r["name"], "webhook_configs": [{"url": f"http://{webhook}/{r['name']}", "send_resolved": True}]}
            for r in src["receivers"]
        ],
    }
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class WebhookRecorder:
    """Records Alertmanager webhook notifications: (receiver, status, labels)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.notes: list[tuple[float, str, str, dict]] = []
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(n))
                    with rec.lock:
                        for a in body.get("alerts", []):
                            rec.notes.append((time.monotonic(), body.get("receiver", ""), a.get("status", ""),
                                              a.get("labels", {})))
                except ValueError:
                    pass
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> dict[tuple[str, str], set[str]]:
        """(alertname, model) -> receivers that got it firing."""
        out: dict[tuple[str, str], set[str]] = {}
        with self.lock:
            for _, receiver, status, lb in self.notes:
                if status == "firing":
                    k = (lb.get("alertname", ""), alert_scope(lb))
                    out.setdefault(k, set()).add(receiver)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def prometheus_config(workdir: Path, sim: str, gw: str, shipper: str, am: str | None, dead: str) -> Path:
    cfg = {
        "global": {"scrape_interval": "5s", "scrape_timeout": "4s", "evaluation_interval": "5s"},
        # The project's rule files, loaded in place and unchanged.
        "rule_files": [RULES_GLOB],
        "scrape_configs": [
            {"job_name": "vllm", "static_configs": [{"targets": [sim, dead]}]},
            {"job_name": "llm-gateway", "static_configs": [{"targets": [gw]}]},
            {"job_name": "log-shipper", "static_configs": [{"targets": [shipper]}]},
        ],
    }
    if am:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [am]}]}]}
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------


def alert_scope(lb: dict) -> str:
    """What an alert is about: its model, else its upstream pool, instance or tenant."""
    return lb.get("model") or lb.get("model_name") or lb.get("upstream") or lb.get("instance") or lb.get("tenant") or ""


class AlertWatch:
    """Polls /api/v1/alerts and keeps a timeline of state changes."""

    def __init__(self, prom: str):
        self.prom = prom
        self.state: dict[tuple[str, str], str] = {}
        self.active_at: dict[tuple[str, str], str] = {}
        self.labels: dict[tuple[str, str], dict] = {}
        self.first: dict[tuple[tuple[str, str], str], float] = {}
        self.timeline: list[tuple[float, str, str, str, str]] = []
        self.seen_in_phase: dict[str, set[tuple[str, str, str]]] = {}
        self.phase = "setup"
        self.t_phase2: float | None = None

    @staticmethod
    def key(a: dict) -> tuple[str, str]:
        lb = a["labels"]
        return (lb["alertname"], alert_scope(lb))

    def poll(self) -> list[dict]:
        alerts = prom_alerts(self.prom)
        now = time.monotonic()
        current = {}
        for a in alerts:
            k = self.key(a)
            # Several series may share a key (e.g. per instance); firing wins.
            if current.get(k) != "firing":
                current[k] = a["state"]
            self.active_at.setdefault(k, a.get("activeAt", ""))
            self.labels[k] = a["labels"]
            self.seen_in_phase.setdefault(self.phase, set()).add((k[0], k[1], a["state"]))
        for k in set(self.state) | set(current):
            old, new = self.state.get(k, "inactive"), current.get(k, "inactive")
            if old != new:
                self.timeline.append((now, self.phase, k[0], k[1], f"{old} -> {new}"))
                self.first.setdefault((k, new), now)
                if new == "pending":
                    # activeAt of this pending period
                    for a in alerts:
                        if self.key(a) == k:
                            self.active_at[k] = a.get("activeAt", "")
        self.state = current
        return alerts

    def print_timeline(self) -> None:
        print("\nAlert timeline (seconds since the start of the storms; negative: quiet phase)")
        print(f"{'t':>8}  {'phase':<7} {'alert':<34} {'model':<14} change")
        base = self.t_phase2 if self.t_phase2 is not None else T0
        for t, phase, name, scope, change in self.timeline:
            print(f"{t - base:8.1f}  {phase:<7} {name:<34} {scope:<14} {change}")
        print(flush=True)


def loadgen(procs: Procs, name: str, scenario: str, gw: str, model: str, extra: list[str]) -> Proc:
    argv = [
        BIN_DIR / "loadgen",
        scenario,
        "--target",
        f"http://{gw}",
        "--model",
        model,
        "--api-key",
        TENANT_KEYS[MODEL_TENANT[model]],
        "--json",
        "-q",
        *extra,
    ]
    return procs.start(name, argv)


def loadgen_sim(procs: Procs, name: str, scenario: str, sim: str, model: str, extra: list[str]) -> Proc:
    """loadgen straight at a vllm-sim (no gateway, no API key, no events)."""
    argv = [BIN_DIR / "loadgen", scenario, "--target", f"http://{sim}", "--model", model, "--json", "-q", *extra]
    return procs.start(name, argv)


def direct_requests(gw: str, chk: Checks) -> dict[str, dict]:
    """Edge cases sent by hand. Returns request_id -> expected event fields."""
    key = TENANT_KEYS["team-a"]
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    chat = lambda model, **kw: json.dumps(  # noqa: E731
        {"model": model, "messages": [{"role": "user", "content": "hello"}], **kw}
    ).encode()
    expect: dict[str, dict] = {}

    def one(rid, method, path, body, headers, want_status, fields):
        status, hdrs, data = request(gw, method, path, body, {**headers, "x-request-id": rid})
        chk.check(
            f"direct {rid}: HTTP {want_status}",
            status == want_status and hdrs.get("x-request-id") == rid,
            f"got {status}, x-request-id {hdrs.get('x-request-id')!r}",
            why=f"body {data[:300]!r}",
        )
        if want_status >= 400 and want_status != 401:
            try:
                err = json.loads(data)["error"]
                ok = isinstance(err, dict) and {"message", "type", "code"} <= set(err)
            except (ValueError, KeyError, TypeError):
                ok = False
            chk.check(f"direct {rid}: OpenAI error shape", ok, data[:160].decode(errors="replace"))
        expect[rid] = fields

    one("e2e-ok", "POST", "/v1/chat/completions", chat(CONTROL), auth, 200,
        {"status": 200, "model": CONTROL, "tenant": "team-a", "finish_reason": "stop", "level": "info"})
    one("e2e-models", "GET", "/v1/models", None, auth, 200,
        {"status": 200, "route": "/v1/models", "tenant": "team-a", "level": "info"})
    one("e2e-embeddings", "POST", "/v1/embeddings",
        json.dumps({"model": CONTROL, "input": "hello"}).encode(), auth, 200,
        {"status": 200, "route": "/v1/embeddings", "model": CONTROL, "level": "info"})
    one("e2e-unknown-model", "POST", "/v1/chat/completions", chat("no-such-model"), auth, 404,
        {"status": 404, "error_type": "model_not_found", "level": "warn"})
    one("e2e-bad-json", "POST", "/v1/chat/completions", b"{not json", auth, 400,
        {"status": 400, "error_type": "invalid_request", "model": "unknown", "level": "warn"})
    one("e2e-no-key", "POST", "/v1/chat/completions", chat(CONTROL),
        {"content-type": "application/json"}, 401,
        {"status": 401, "error_type": "authentication", "level": "warn"})

    # Client gone mid-stream: read the first bytes of a slow stream, then hang up.
    rid = "e2e-disconnect-stream"
    host, port = gw.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("POST", "/v1/chat/completions",
              body=chat(CONTROL, stream=True, max_tokens=200),
              headers={**auth, "x-request-id": rid, "x-sim-output-tokens": "200",
                       "x-sim-tokens-per-second": "20"})
    r = c.getresponse()
    first = r.read1(64) if hasattr(r, "read1") else r.read(64)
    chk.check(f"direct {rid}: stream started", r.status == 200 and len(first) > 0,
              f"status {r.status}, {first[:80]!r}")
    c.sock.shutdown(socket.SHUT_RDWR) if c.sock else None
    c.close()
    expect[rid] = {"status": 200, "finish_reason": "client_disconnect", "error_type": "client_disconnect",
                   "stream": True}

    # Client gone before any response byte: a non-stream answer with a 3 s prefill.
    rid = "e2e-disconnect-early"
    s = socket.create_connection((host, int(port)), timeout=10)
    body = chat(CONTROL)
    s.sendall(
        (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {gw}\r\ncontent-type: application/json\r\n"
         f"authorization: Bearer {key}\r\nx-request-id: {rid}\r\nx-sim-ttft-ms: 3000\r\n"
         f"content-length: {len(body)}\r\n\r\n").encode() + body
    )
    time.sleep(0.5)
    s.close()
    expect[rid] = {"status": 499, "error_type": "client_disconnect", "level": "warn"}

    # Not /v1: no events.
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _, _ = request(gw, "GET", path)
        chk.check(f"direct GET {path}: HTTP 200", status == 200, f"got {status}")
    return expect


def wait_until(pred, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def read_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    raw = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return raw, [json.loads(ln) for ln in raw]


def run(chk: Checks, workdir: Path, procs: Procs) -> None:
    rules = load_rules()
    for name in dict.fromkeys(n for n, _, _, _ in EXPECTED + TOLERATED + TOLERATED_PENDING):
        chk.check(f"rule files define {name}", name in rules,
                  f"{rules[name]['file']}, for {rules[name]['for_s']:.0f}s" if name in rules else f"not in {RULES_GLOB}")
    chk.check("rule files define Watchdog", "Watchdog" in rules)

    for b in ("vllm-sim", "llm-gateway", "log-shipper", "loki-receiver", "loadgen"):
        if not (BIN_DIR / b).exists():
            raise Abort(f"missing binary {BIN_DIR / b} (build with cargo first)")
    prom_bin = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not prom_bin:
        raise Abort("prometheus not found (Debian package `prometheus`)")

    # --- start the stack -----------------------------------------------------
    events_dir = workdir / "events"
    events_dir.mkdir()
    events = events_dir / "events.jsonl"
    received = workdir / "received.jsonl"

    receiver = procs.start("loki-receiver", [BIN_DIR / "loki-receiver", "--listen", "127.0.0.1:0",
                                             "--record", received])
    sim = procs.start("vllm-sim", [BIN_DIR / "vllm-sim", "--listen", "127.0.0.1:0",
                                   *sum((["--model", m] for m in MODELS), []), "--seed", "7"])
    dead_sim = procs.start("vllm-sim-dead", [BIN_DIR / "vllm-sim", "--listen", "127.0.0.1:0",
                                             "--model", DEAD, "--seed", "8"])
    rec_addr = receiver.wait_listening(30)
    sim_addr = sim.wait_listening(30)
    dead_addr = dead_sim.wait_listening(30)
    gw = procs.start("llm-gateway", [BIN_DIR / "llm-gateway", "--config",
                                     gateway_config(workdir, sim_addr, events)])
    gw_addr = gw.wait_listening(30)
    shipper = procs.start("log-shipper", [
        BIN_DIR / "log-shipper", "--loki-url", f"http://{rec_addr}",
        "--input", str(events_dir / "*.jsonl"),
        "--positions", workdir / "positions.json",
        "--metrics-listen", "127.0.0.1:0",
    ])
    shipper_addr = shipper.wait_listening(30, r"metrics listening on (\S+)")
    log(f"sim {sim_addr}, sim to kill {dead_addr}, gateway {gw_addr}, shipper metrics {shipper_addr}, receiver {rec_addr}")

    am_addr = None
    am_bin = os.environ.get("ALERTMANAGER") or shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    webhook = None
    if am_bin and AM_CONFIG.exists():
        webhook = WebhookRecorder()
        procs.webhook = webhook
        am_cfg = alertmanager_config(workdir, webhook.addr)
        for attempt in range(3):
            am_addr = f"127.0.0.1:{free_port()}"
            am = procs.start(f"alertmanager-{attempt}", [
                am_bin, f"--config.file={am_cfg}", f"--storage.path={workdir / f'am{attempt}'}",
                f"--web.listen-address={am_addr}", "--cluster.listen-address=", "--log.level=warn",
            ])
            if wait_until(lambda: (not am.running()) or _ready(am_addr), 60) and am.running():
                break
            am.stop()
        else:
            raise Abort(f"alertmanager did not start: {am.stderr_text()[-2000:]}")
        log(f"alertmanager {am_addr} ({am_bin}), routes and inhibitions of {AM_CONFIG.relative_to(ROOT)}")
    else:
        log("no Alertmanager binary (Debian prometheus-alertmanager): delivery not checked")
    prom_cfg = prometheus_config(workdir, sim_addr, gw_addr, shipper_addr, am_addr, dead_addr)
    prom_addr = ""
    for attempt in range(3):
        prom_addr = f"127.0.0.1:{free_port()}"
        prom = procs.start(f"prometheus-{attempt}", [
            prom_bin, f"--config.file={prom_cfg}", f"--storage.tsdb.path={workdir / f'tsdb{attempt}'}",
            f"--web.listen-address={prom_addr}", "--log.level=warn",
        ])
        ok = wait_until(lambda: (not prom.running()) or _ready(prom_addr), 60)
        if prom.running() and ok:
            break
        prom.stop()
    else:
        raise Abort(f"prometheus did not start: {prom.stderr_text()[-2000:]}")
    log(f"prometheus {prom_addr} ({prom_bin}), rules {RULES_GLOB}")

    # Rules loaded unchanged: the groups Prometheus reports are the files' groups.
    status, body = http_get(f"http://{prom_addr}/api/v1/rules")
    groups = [g["name"] for g in json.loads(body)["data"]["groups"]]
    chk.check("prometheus loaded every rule group of logql-rules/prometheus", sorted(groups) == sorted(rule_groups()),
              f"{len(groups)} groups", why=f"prometheus {sorted(groups)} vs files {sorted(rule_groups())}")

    def targets_up():
        _, b = http_get(f"http://{prom_addr}/api/v1/targets")
        act = json.loads(b)["data"]["activeTargets"]
        return {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in act}
    t_up = wait_until(lambda: (lambda h: h if len(h) == 4 and all(v == "up" for v in h.values()) else None)(targets_up()), 30, 1)
    chk.check("prometheus scrapes vllm (2 targets), llm-gateway, log-shipper",
              t_up is not None and sorted(j for j, _ in t_up) == ["llm-gateway", "log-shipper", "vllm", "vllm"],
              f"targets {targets_up()}")

    watch = AlertWatch(prom_addr)

    # --- phase 1: quiet -----------------------------------------------------
    watch.phase = "quiet"
    log(f"phase 1: quiet traffic for {QUIET_SECS}s on {', '.join(MODELS)}")
    runs: list[tuple[str, str, Proc]] = []  # (model, scenario, proc)
    runs.append((CONTROL, "steady", loadgen(procs, "loadgen-control", "steady", gw_addr, CONTROL,
                                            ["--rate", "2", "--duration-secs", str(QUIET_SECS + REF_SECS),
                                             "--max-tokens", "32", *SHORT_ANSWER])))
    for m in (LAT, REF, ERR):
        runs.append((m, "steady", loadgen(procs, f"loadgen-quiet-{m}", "steady", gw_addr, m,
                                          ["--rate", "1", "--duration-secs", str(QUIET_SECS), "--max-tokens", "32",
                                           *SHORT_ANSWER])))
    # Straight at the second simulator (no gateway, no events): healthy, then idle for the
    # last 30 s of the quiet phase, so that "nothing finished for 2 minutes" (VllmEngineDead)
    # holds well before the 5xx-share warning's 3 minutes: Alertmanager must see the critical
    # before it would notify the warning it inhibits.
    sim_runs: list[tuple[str, str, Proc]] = []
    sim_runs.append((DEAD, "steady", loadgen_sim(procs, "loadgen-quiet-dead", "steady", dead_addr, DEAD,
                                                 ["--rate", "1", "--duration-secs", str(max(10, QUIET_SECS - 30)),
                                                  "--max-tokens", "32", *SHORT_ANSWER])))
    t1 = time.monotonic()
    direct = direct_requests(gw_addr, chk)
    wd = wait_until(lambda: any(a["labels"]["alertname"] == "Watchdog" and a["state"] == "firing"
                                for a in watch.poll()), 30, 1)
    chk.check("Watchdog is firing", bool(wd))
    while time.monotonic() - t1 < QUIET_SECS:
        watch.poll()
        time.sleep(POLL_SECS)
    # Quiet traffic was seen (otherwise "no alert" proves nothing).
    seen = {r["metric"].get("model") for r in prom_query(prom_addr, "sum by (model) (rate(llm_gateway_requests_total[1m])) > 0")}
    chk.check("quiet: Prometheus sees gateway traffic for every model", set(MODELS) <= seen, f"models {seen}")
    seen = {r["metric"].get("model_name") for r in prom_query(prom_addr, "sum by (model_name) (rate(vllm:request_success_total[1m])) > 0")}
    chk.check("quiet: Prometheus sees vLLM traffic for every model", set(MODELS + [DEAD]) <= seen, f"models {seen}")
    seen = {r["metric"].get("instance") for r in prom_query(
        prom_addr, 'sum by (instance) (rate(http_requests_total{job="vllm", status="2xx"}[1m])) > 0')}
    chk.check("quiet: Prometheus sees vllm-sim's http_requests_total on both targets", {sim_addr, dead_addr} <= seen,
              f"instances {seen}")
    others = sorted({(n, s, st) for n, s, st in watch.seen_in_phase.get("quiet", set()) if n != "Watchdog"})
    chk.check("quiet: no alert but Watchdog pending or firing", not others, why=f"saw {others}")

    # --- phase 2: storms ----------------------------------------------------
    for m, sc, p in runs[1:] + sim_runs:
        try:
            p.p.wait(QUIET_SECS + 45)
        except subprocess.TimeoutExpired:
            pass
    watch.phase = "storms"
    watch.t_phase2 = time.monotonic()
    log(f"phase 2: latency-spike on {LAT} ({LAT_SECS}s), refusal-storm on {REF} ({REF_SECS}s), "
        f"error-storm on {ERR} ({ERR_SECS}s); budget {PHASE2_BUDGET}s")
    runs.append((LAT, "latency-spike", loadgen(procs, "loadgen-latency-spike", "latency-spike", gw_addr, LAT, [
        "--concurrency", "4", "--duration-secs", str(LAT_SECS), "--max-tokens", str(LAT_OUTPUT_TOKENS),
        "--header", f"x-sim-output-tokens: {LAT_OUTPUT_TOKENS}",
        "--header", f"x-sim-tokens-per-second: {LAT_TOKENS_PER_SECOND}"])))
    runs.append((REF, "refusal-storm", loadgen(procs, "loadgen-refusal-storm", "refusal-storm", gw_addr, REF, [
        "--concurrency", "2", "--duration-secs", str(REF_SECS), "--max-tokens", "48", *SHORT_ANSWER])))
    runs.append((ERR, "error-storm", loadgen(procs, "loadgen-error-storm", "error-storm", gw_addr, ERR, [
        "--concurrency", "2", "--duration-secs", str(ERR_SECS), "--max-tokens", "32", *SHORT_ANSWER])))
    # It keeps meeting the dead engine until the Alertmanager checks are done (about
    # REF_SECS + 80 s), as real clients would: VllmEngineDead must still be firing when the
    # test looks at what it inhibits.
    dead_secs = REF_SECS + 100
    sim_runs.append((DEAD, "engine-death", loadgen_sim(procs, "loadgen-engine-death", "engine-death", dead_addr, DEAD, [
        "--rate", "2", "--duration-secs", str(dead_secs), "--max-tokens", "32", *SHORT_ANSWER])))

    expected = EXPECTED + [
        # The error storm's 500s are HTTP 5xx too (on the simulator serving the four models),
        # and upstream errors of the gateway's pool.
        ("VllmHttp5xxRateHigh", "instance", sim_addr, "error-storm"),
        ("GatewayUpstreamErrorsHigh", "upstream", "vllm", "error-storm"),
        # Engine death: only 5xx, nothing finishes (request_success does not move, not even
        # finished_reason="error").
        ("VllmEngineDead", "instance", dead_addr, "engine-death"),
        ("VllmHttp5xxRateHigh", "instance", dead_addr, "engine-death"),
    ]
    inhibited = INHIBITED | {("VllmHttp5xxRateHigh", dead_addr)}
    for name in ("VllmHttp5xxRateHigh", "GatewayUpstreamErrorsHigh", "VllmEngineDead"):
        chk.check(f"rule files define {name}", name in rules)
    expected_keys = {(n, m): (label, sc) for n, label, m, sc in expected}
    tolerated_pending_keys = {(n, m) for n, _, m, _ in TOLERATED_PENDING}
    tolerated_keys = {(n, m) for n, _, m, _ in TOLERATED} | tolerated_pending_keys
    deadline = watch.t_phase2 + PHASE2_BUDGET
    last_status = 0.0

    def need_firing(name: str) -> bool:
        # In FAST mode an alert whose `for` cannot elapse within the budget only needs pending.
        return not (FAST and rules[name]["for_s"] > PHASE2_BUDGET - 40)

    while time.monotonic() < deadline:
        watch.poll()
        done = all(
            (k, "firing") in watch.first if need_firing(k[0]) else (k, "pending") in watch.first
            for k in expected_keys
        )
        if done:
            break
        if time.monotonic() - last_status > 30:
            last_status = time.monotonic()
            firing = sorted(k[0] for k in expected_keys if (k, "firing") in watch.first)
            pending = sorted(k[0] for k in expected_keys if watch.state.get(k) == "pending")
            log(f"storms +{time.monotonic() - watch.t_phase2:.0f}s: firing {firing}; pending {pending}")
        time.sleep(POLL_SECS)
    watch.poll()
    t_all = time.monotonic() - watch.t_phase2
    log(f"phase 2 alert wait ended after {t_all:.0f}s")

    for (name, model), (label, scenario) in sorted(expected_keys.items()):
        k = (name, model)
        tp = watch.first.get((k, "pending"))
        tf = watch.first.get((k, "firing"))
        base = watch.t_phase2
        chk.check(f"{scenario}: {name}{{{label}={model}}} goes pending", tp is not None,
                  "never pending" if tp is None else f"+{tp - base:.0f}s")
        if need_firing(name):
            for_s = rules[name]["for_s"]
            ok = tf is not None and tp is not None and tf >= tp
            detail = "never firing" if tf is None else f"+{tf - base:.0f}s"
            if ok:
                # Fired after its `for`: from activeAt to the poll that saw it firing.
                act = watch.active_at.get(k, "")
                held = None
                if act:
                    held = time.time() - (time.monotonic() - tf) - datetime.fromisoformat(
                        act.replace("Z", "+00:00")).timestamp()
                ok = held is None or held >= for_s - 1
                detail += f", pending {held:.0f}s >= for {for_s:.0f}s" if held is not None else ""
            chk.check(f"{scenario}: {name}{{{label}={model}}} then fires", ok, detail)
            sev = watch.labels.get(k, {}).get("severity")
            chk.check(f"{scenario}: {name} carries severity {rules[name]['labels'].get('severity')}",
                      sev == rules[name]["labels"].get("severity"), why=f"labels {watch.labels.get(k)}")

    unexpected = sorted({
        (n, s, st) for n, s, st in watch.seen_in_phase.get("storms", set())
        if n != "Watchdog" and (n, s) not in expected_keys and (n, s) not in tolerated_keys
    })
    chk.check("storms: no unexpected alert (control model quiet, no cross-talk)", not unexpected,
              why=f"saw {unexpected}")
    early_firing = sorted({(n, s) for n, s, st in watch.seen_in_phase.get("storms", set())
                           if (n, s) in tolerated_pending_keys and st == "firing"})
    chk.check("storms: warm-up artefacts never fire", not early_firing, why=f"firing {early_firing}")
    chk.check("storms: Watchdog still firing", watch.state.get(("Watchdog", "")) == "firing",
              f"state {watch.state.get(('Watchdog', ''))}")

    # --- loadgen results --------------------------------------------------------
    log("waiting for the loadgen runs to finish")
    summaries: list[tuple[str, str, dict]] = []
    for m, sc, p in runs:
        remaining = max(5.0, (watch.t_phase2 + REF_SECS + 60) - time.monotonic())
        try:
            p.p.wait(remaining)
        except subprocess.TimeoutExpired:
            chk.check(f"loadgen {sc} on {m} finishes", False, "still running")
            p.stop()
            continue
        p.stop()
        try:
            s = json.loads(p.stdout_path.read_text().strip().splitlines()[-1])
        except (ValueError, IndexError):
            chk.check(f"loadgen {sc} on {m} prints a JSON summary", False, why=p.stderr_text()[-500:])
            continue
        summaries.append((m, sc, s))
        log(f"loadgen {p.name}: {s['requests']} requests, ok {s['ok']}, errors {s['errors_by_status']}, "
            f"refusals {s['refusals']}, unfinished {s['unfinished']}, latency p95 "
            f"{(s['latency_ms'] or {}).get('p95')} ms")
    for m, sc, s in summaries:
        bad = {k: v for k, v in s["errors_by_status"].items() if not (sc == "error-storm" and k == "500")}
        chk.check(f"loadgen {sc} on {m}: only the errors the scenario asks for", not bad and s["unfinished"] == 0,
                  f"errors {s['errors_by_status']}, unfinished {s['unfinished']}")
    for m, sc, s in summaries:
        if sc == "latency-spike":
            p95 = (s["latency_ms"] or {}).get("p95") or 0
            chk.check("latency-spike: client-side P95 above 8 s", p95 > 8000, f"p95 {p95} ms")

    # --- events: exactly one per request -------------------------------------------
    sent_by_model: dict[str, int] = {}
    for m, _, s in summaries:
        sent_by_model[m] = sent_by_model.get(m, 0) + s["requests"] + s["unfinished"]
    expected_total = sum(sent_by_model.values()) + len(direct)

    def n_events():
        return len(read_jsonl(events)[0])
    wait_until(lambda: n_events() >= expected_total, 20, 0.5)
    time.sleep(1.0)  # anything extra would show up now
    raw_events, evs = read_jsonl(events)
    log(f"events file: {len(evs)} events; requests sent: {expected_total}")
    chk.check("one event per request (count)", len(evs) == expected_total,
              f"{len(evs)} events for {expected_total} requests ({sent_by_model} + {len(direct)} direct)")
    ids = [e.get("request_id") for e in evs]
    chk.check("request_ids are unique", len(set(ids)) == len(ids),
              f"{len(ids) - len(set(ids))} duplicates")
    chk.check("every event is a response event on a /v1 route (none for /healthz, /readyz, /metrics)",
              all(e.get("event") == "response" and e.get("route", "").startswith("/v1/") for e in evs),
              why=str([e for e in evs if e.get("event") != "response" or not e.get("route", "").startswith("/v1/")][:3]))
    by_model: dict[str, int] = {}
    for e in evs:
        if e["request_id"] not in direct:
            by_model[e["model"]] = by_model.get(e["model"], 0) + 1
    chk.check("events per model match the requests loadgen sent", by_model == sent_by_model,
              f"events {by_model}, sent {sent_by_model}")
    by_id = {e["request_id"]: e for e in evs}
    for rid, want in direct.items():
        got = by_id.get(rid)
        diff = {k: (got or {}).get(k) for k, v in want.items() if (got or {}).get(k) != v}
        chk.check(f"event of {rid}: {', '.join(f'{k}={v}' for k, v in want.items())}", got is not None and not diff,
                  why="missing" if got is None else f"differs: {diff} (event {json.dumps(got)[:400]})")
    for m, sc, s in summaries:
        if sc == "error-storm":
            n500 = sum(1 for e in evs if e["model"] == m and e["status"] == 500)
            chk.check("error-storm: events with status 500 = loadgen's 500s", n500 == s["errors_by_status"].get("500"),
                      f"events {n500}, loadgen {s['errors_by_status'].get('500')}")
        if sc == "refusal-storm":
            forced = s["requests"] // 2  # share 0.5, spread evenly over request numbers
            nref = sum(1 for e in evs if e["model"] == m and e["refusal"])
            chk.check("refusal-storm: every forced refusal flagged, nothing else", nref == forced,
                      f"events with refusal=true {nref}, forced {forced} of {s['requests']}")
    tenants = {(e["model"], e["tenant"]) for e in evs if e["request_id"] not in direct}
    chk.check("events carry the tenant of the API key", tenants == {(m, MODEL_TENANT[m]) for m in MODELS},
              f"{sorted(tenants)}")
    try:
        import jsonschema  # noqa: PLC0415

        if EVENTS_SCHEMA.exists():
            schema = json.loads(EVENTS_SCHEMA.read_text())
            v = jsonschema.validators.validator_for(schema)(schema)
            errs = [(e.get("request_id"), err.message) for e in evs for err in v.iter_errors(e)]
            chk.check("every event matches docs/events.schema.json", not errs, f"{len(errs)} errors, e.g. {errs[:3]}")
    except ImportError:
        log("jsonschema not installed: event schema not checked")

    # --- delivery: every event reached the receiver, exactly once ------------------------
    def n_received():
        return len(read_jsonl(received)[0])
    t_wait = time.monotonic()
    wait_until(lambda: n_received() >= len(evs), 60, 0.5)
    log(f"receiver caught up in {time.monotonic() - t_wait:.1f}s")
    time.sleep(2.0)
    _, recs = read_jsonl(received)
    rec_ids = [r["structured_metadata"].get("request_id") for r in recs]
    missing = set(ids) - set(rec_ids)
    chk.check("every event reached the receiver", not missing, f"{len(evs)} events",
              why=f"{len(missing)} missing, e.g. {sorted(missing)[:3]}")
    chk.check("each exactly once (no restart, so no duplicates)", len(rec_ids) == len(set(rec_ids)) == len(evs),
              f"{len(rec_ids)} entries, {len(set(rec_ids))} distinct, {len(evs)} events")
    raw_by_id = {json.loads(ln)["request_id"]: ln for ln in raw_events}
    bad_labels, bad_line, bad_ts = [], [], []
    for r in recs:
        rid = r["structured_metadata"].get("request_id")
        e = by_id.get(rid)
        if e is None:
            continue
        want = {"app": "llm-gateway", "event": e["event"], "level": e["level"], "model": e["model"], "tenant": e["tenant"]}
        if r["labels"] != want or r["structured_metadata"] != {"request_id": rid}:
            bad_labels.append((rid, r["labels"], r["structured_metadata"]))
        if r["line"] != raw_by_id[rid]:
            bad_line.append(rid)
        if int(r["ts_ns"]) != parse_ts_ns(e["ts"]):
            bad_ts.append((rid, r["ts_ns"], e["ts"]))
    chk.check("stream labels app, event, level, model, tenant; metadata request_id", not bad_labels,
              f"{len(bad_labels)} wrong, e.g. {bad_labels[:2]}")
    chk.check("entry line is the event line unchanged", not bad_line, f"{len(bad_line)} differ")
    chk.check("entry timestamp is the event's ts", not bad_ts, f"{len(bad_ts)} differ, e.g. {bad_ts[:2]}")

    # --- Alertmanager: routes and inhibitions of the project's config ---------------------
    if webhook is not None:
        want: dict[tuple[str, str], set[str]] = {("Watchdog", ""): {"watchdog"}}
        for (name, model) in expected_keys:
            if ((name, model), "firing") in watch.first and (name, model) not in inhibited:
                want[(name, model)] = RECEIVERS_BY_SEVERITY[rules[name]["labels"]["severity"]]
        t_wait = time.monotonic()
        wait_until(lambda: all(v <= webhook.delivered().get(k, set()) for k, v in want.items()), 60, 1)
        log(f"alertmanager deliveries complete after {time.monotonic() - t_wait:.0f}s more")
        got_d = webhook.delivered()
        for k, receivers in sorted(want.items()):
            chk.check(f"alertmanager delivers {k[0]}{'{' + k[1] + '}' if k[1] else ''} to {', '.join(sorted(receivers))}",
                      got_d.get(k, set()) == receivers, f"got {sorted(got_d.get(k, set()))}")
        _, body = http_get(f"http://{am_addr}/api/v2/alerts")
        am_alerts = {(a["labels"].get("alertname"), alert_scope(a["labels"])): a for a in json.loads(body)}
        for k in sorted(inhibited):
            if (k, "firing") not in watch.first:
                continue
            st = am_alerts.get(k, {}).get("status", {})
            chk.check(f"alertmanager inhibits {k[0]}{{{k[1]}}} (critical of its family firing)",
                      k not in got_d and (k not in am_alerts or (st.get("state") == "suppressed" and st.get("inhibitedBy"))),
                      f"delivered to {sorted(got_d.get(k, set()))}, state {st.get('state')}")
        allowed = set(want) | tolerated_keys
        extra = {k: sorted(v) for k, v in got_d.items() if k not in allowed}
        chk.check("alertmanager delivers nothing else", not extra, why=f"{extra}")

    # --- the simulator that was killed --------------------------------------------------
    log("waiting for the loadgen runs straight at the killed simulator to finish")
    sim_summaries: list[tuple[str, str, dict]] = []
    for m, sc, p in sim_runs:
        try:
            p.p.wait(max(5.0, (watch.t_phase2 + dead_secs + 60) - time.monotonic()))
        except subprocess.TimeoutExpired:
            chk.check(f"loadgen {sc} on {m} finishes", False, "still running")
        p.stop()
        try:
            s = json.loads(p.stdout_path.read_text().strip().splitlines()[-1])
        except (ValueError, IndexError):
            chk.check(f"loadgen {sc} on {m} prints a JSON summary", False, why=p.stderr_text()[-500:])
            continue
        sim_summaries.append((m, sc, s))
        log(f"loadgen {p.name}: {s['requests']} requests, ok {s['ok']}, errors {s['errors_by_status']}")
    for m, sc, s in sim_summaries:
        if sc == "engine-death":
            chk.check("engine-death: every request got a 500 (the first killed the engine)",
                      s["requests"] > 10 and s["errors_by_status"] == {"500": s["requests"]} and s["unfinished"] == 0,
                      f"requests {s['requests']}, errors {s['errors_by_status']}, unfinished {s['unfinished']}")
        else:
            chk.check(f"loadgen {sc} on {m} (straight at vllm-sim): no error",
                      not s["errors_by_status"] and s["unfinished"] == 0, f"errors {s['errors_by_status']}")
    status, _ = http_get(f"http://{dead_addr}/health")
    chk.check("engine-death: the simulator's /health answers 503", status == 503, f"status {status}")

    # --- metrics agree with the events ------------------------------------------------
    time.sleep(11)  # two scrapes after the last event
    got = {r["metric"].get("model", ""): round(float(r["value"][1]))
           for r in prom_query(prom_addr, "sum by (model) (llm_gateway_requests_total)")}
    want: dict[str, int] = {}
    for e in evs:
        label = e["model"] if e["model"] in MODELS else "other"
        want[label] = want.get(label, 0) + 1
    chk.check("llm_gateway_requests_total by model = events by model", got == want, f"metrics {got}, events {want}")
    got = {r["metric"].get("model_name", ""): round(float(r["value"][1]))
           for r in prom_query(prom_addr, "sum by (model_name) (vllm:request_success_total)")}
    for m in (LAT, REF, ERR):
        n = sum(1 for e in evs if e["model"] == m)
        chk.check(f"vllm:request_success_total{{model_name={m}}} = gateway events (no retries, no loss)",
                  got.get(m) == n, f"vllm {got.get(m)}, events {n}")
    # The dead engine finished only the quiet requests; its 500s are HTTP 5xx, never
    # finished_reason="error".
    quiet_dead = sum(s["requests"] for _, sc, s in sim_summaries if sc == "steady")
    death = next((s for _, sc, s in sim_summaries if sc == "engine-death"), None)
    chk.check(f"vllm:request_success_total{{model_name={DEAD}}} counts only the requests before the death",
              got.get(DEAD) == quiet_dead, f"vllm {got.get(DEAD)}, quiet requests {quiet_dead}")
    errs = prom_query(prom_addr, f'sum(vllm:request_success_total{{model_name="{DEAD}", finished_reason="error"}})')
    chk.check(f"engine death is not finished_reason=\"error\" ({DEAD})",
              bool(errs) and round(float(errs[0]["value"][1])) == 0, f"{errs}")
    h5 = prom_query(prom_addr, f'sum(http_requests_total{{instance="{dead_addr}", status="5xx"}})')
    n5 = round(float(h5[0]["value"][1])) if h5 else None
    chk.check("engine death: http_requests_total{status=\"5xx\"} = loadgen's 500s",
              death is not None and n5 == death["errors_by_status"].get("500"),
              f"metric {n5}, loadgen {death and death['errors_by_status']}")
    sent = prom_query(prom_addr, "sum(log_shipper_entries_sent_total)")
    n_sent = round(float(sent[0]["value"][1])) if sent else None
    chk.check("log_shipper_entries_sent_total = events", n_sent == len(evs), f"metric {n_sent}, events {len(evs)}")
    _, body = http_get(f"http://{prom_addr}/api/v1/rules")
    broken = [(r["name"], r.get("lastError")) for g in json.loads(body)["data"]["groups"] for r in g["rules"]
              if r.get("health") != "ok"]
    n_rules = sum(len(g["rules"]) for g in json.loads(body)["data"]["groups"])
    chk.check("every rule evaluates without error", not broken, f"{n_rules} rules", why=f"{broken[:5]}")

    watch.print_timeline()

    # --- shutdown ---------------------------------------------------------------------
    log("stopping the stack")
    n_before = n_events()
    code = gw.stop()
    chk.check("llm-gateway exits 0 on SIGTERM", code == 0, f"exit {code}", why=gw.stderr_text()[-500:])
    chk.check("no event written at shutdown (every request already had its one event)", n_events() == n_before,
              f"{n_before} -> {n_events()}")
    for p in (shipper, sim, dead_sim, receiver):
        code = p.stop()
        chk.check(f"{p.name} exits 0 on SIGTERM", code == 0, f"exit {code}", why=p.stderr_text()[-500:])
    procs.stop_all()


def _ready(addr: str) -> bool:
    try:
        return http_get(f"http://{addr}/-/ready", 2)[0] == 200
    except OSError:
        return False


def main() -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    chk = Checks()
    workdir = Path(tempfile.mkdtemp(prefix="llm-e2e-"))
    procs = Procs(workdir)
    log(f"e2e: workdir {workdir}, binaries {BIN_DIR}{' (FAST mode)' if FAST else ''}")
    try:
        run(chk, workdir, procs)
    except Abort as e:
        chk.check("e2e set-up", False, str(e))
    except Terminated as e:
        chk.check("e2e finished", False, f"interrupted by {e}")
    except Exception:  # noqa: BLE001 - report anything as a failure, then clean up
        chk.check("e2e ran without an internal error", False, traceback.format_exc())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        if chk.failed:
            for p in procs.all:
                tail = p.stderr_text()[-1500:]
                if tail.strip():
                    print(f"--- {p.name} stderr (tail) ---\n{tail}")
        if KEEP:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"e2e took {time.monotonic() - T0:.0f}s")
    print(f"{chk.passed} passed, {chk.failed} failed", flush=True)
    return 0 if chk.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

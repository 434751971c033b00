#!/usr/bin/env python3
"""Checks of logql-rules that promtool and amtool do not do themselves.

Usage: python3 logql-rules/tests/checks.py CHECK...   (from the repository root)

CHECK is one of:
  conventions   every alert: severity in {critical, warning, info}, summary ending with a
                period, description, runbook_url = settings.yml's runbook_url_pattern with
                the alert's name; names UpperCamelCase,
                unique; group names lowercase; recording rules named level:metric:operations;
                every alert in a table of README.md
  coverage      every Prometheus alert has a firing case and an earlier quiet case in the
                promtool tests; every recording rule is checked by a promql_expr_test
  runbooks      every alert's runbook_url anchor exists in runbooks.md, with the sections
                Meaning, Impact, Diagnosis, Mitigation; no runbook without an alert
  logql         every Loki rule parses (tools/logql/check.mjs, Grafana's LogQL grammar), is a
                metric query, and uses only the shipper's stream labels and event fields;
                plus a self-test that unknown names and broken queries are rejected
  routes        `amtool config routes test` for every line of alertmanager/tests/routes.tsv
  inhibitions   alertmanager/tests/inhibitions.yml against a real Alertmanager on 127.0.0.1

Prints one line per check, `ok - NAME` or `not ok - NAME: why`; exit code 1 on any failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent
ROOT = RULES.parent
PROM = RULES / "prometheus"
LOKI = RULES / "loki"
AM = RULES / "alertmanager"
RUNBOOKS = RULES / "runbooks.md"
CHECKER = ROOT / "tools" / "logql" / "check.mjs"
SETTINGS = RULES / "settings.yml"
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]

# Stream labels log-shipper sets (docs: log-shipper defaults).
STREAM_LABELS = ["app", "event", "level", "model", "tenant", "parse_error"]
# Event fields: the contract's table plus the extras fixed between the parts. Used when
# docs/events.schema.json does not exist.
CONTRACT_EVENT_FIELDS = [
    "ts", "level", "event", "request_id", "route", "model", "tenant", "upstream", "stream",
    "status", "finish_reason", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "refusal", "refusal_reason", "cost_usd", "error_type",
    "endpoint", "schema_version", "refusal_excerpt",
]

RESULTS: list[tuple[bool, str]] = []


def report(ok: bool, name: str, why: str = "") -> None:
    RESULTS.append((ok, name))
    line = f"ok - {name}" if ok else f"not ok - {name}: {why}"
    print(line, flush=True)


def load(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def runbook_url(alert: str) -> str:
    """The one place runbook links come from: settings.yml's runbook_url_pattern."""
    return str(load(SETTINGS)["runbook_url_pattern"]).replace("%s", alert.lower())


def rule_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.rules.yml"))


def all_rules(directory: Path):
    """Yield (file, group, rule) for every rule of every *.rules.yml in directory."""
    for path in rule_files(directory):
        for group in load(path).get("groups", []):
            for rule in group.get("rules", []):
                yield path, group, rule


def event_fields() -> tuple[list[str], str]:
    schema = ROOT / "docs" / "events.schema.json"
    if schema.is_file():
        props = json.loads(schema.read_text(encoding="utf-8")).get("properties", {})
        if props:
            return sorted(props), str(schema.relative_to(ROOT))
    return CONTRACT_EVENT_FIELDS, "the contract's event table"


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower-case, drop punctuation, spaces to dashes."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


# ---------------------------------------------------------------------------------------


def check_conventions() -> None:
    names: dict[str, str] = {}
    readme = (RULES / "README.md").read_text(encoding="utf-8") if (RULES / "README.md").is_file() else ""
    for directory in (PROM, LOKI):
        for path, group, rule in all_rules(directory):
            where = f"{path.relative_to(ROOT)}"
            gname = group.get("name", "")
            if gname != gname.lower():
                report(False, f"group name {gname} is lowercase", where)
            if "record" in rule:
                rec = rule["record"]
                good = re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rec) is not None
                report(good, f"recording rule {rec} is named level:metric:operations",
                       "expected level:metric:operations")
                continue
            alert = rule.get("alert", "")
            problems = []
            if not re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", alert):
                problems.append("name not UpperCamelCase")
            if alert in names:
                problems.append(f"duplicate of an alert in {names[alert]}")
            names[alert] = where
            labels = rule.get("labels") or {}
            ann = rule.get("annotations") or {}
            if labels.get("severity") not in SEVERITIES:
                problems.append(f"severity {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
            summary = str(ann.get("summary", ""))
            if not summary.endswith("."):
                problems.append("summary missing or not ending with a period")
            if "{{" in summary:
                problems.append("summary must be static")
            if not str(ann.get("description", "")).strip():
                problems.append("no description")
            url = str(ann.get("runbook_url", ""))
            if url != runbook_url(alert):
                problems.append(f"runbook_url {url!r} is not {runbook_url(alert)!r} (settings.yml)")
            if alert != "Watchdog" and not rule.get("for"):
                problems.append("no `for`")
            if not re.search(rf"^\| {re.escape(alert)} \|", readme, re.M):
                problems.append("not in the alert tables of logql-rules/README.md")
            report(not problems, f"alert {alert} follows the conventions", "; ".join(problems))


def check_coverage() -> None:
    firing: dict[str, list[float]] = {}
    quiet: dict[str, list[float]] = {}
    expr_tests: list[str] = []
    for path in sorted((PROM / "tests").glob("*.test.yml")):
        doc = load(path)
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []) or []:
                t = parse_duration(str(case.get("eval_time", "0s")))
                target = firing if case.get("exp_alerts") else quiet
                target.setdefault(case["alertname"], []).append(t)
            for case in test.get("promql_expr_test", []) or []:
                expr_tests.append(case["expr"])
    for path, _group, rule in all_rules(PROM):
        if "alert" in rule:
            alert = rule["alert"]
            if not firing.get(alert):
                report(False, f"alert {alert} has promtool tests", "no firing case")
                continue
            if alert == "Watchdog":
                report(True, f"alert {alert} has promtool tests")
                continue
            first_fire = min(firing[alert])
            before = [t for t in quiet.get(alert, []) if t < first_fire]
            report(bool(before), f"alert {alert} has promtool tests",
                   "no quiet case before its first firing case")
        else:
            rec = rule["record"]
            hit = any(re.search(rf"(?<![\w:]){re.escape(rec)}(?![\w:])", e) for e in expr_tests)
            report(hit, f"recording rule {rec} is checked by a promql_expr_test",
                   f"no promql_expr_test reads it ({path.name})")


def parse_duration(s: str) -> float:
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s):
        total += float(num) * units[unit]
    return total


def check_runbooks() -> None:
    if not RUNBOOKS.is_file():
        report(False, "runbooks.md exists", str(RUNBOOKS))
        return
    text = RUNBOOKS.read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^## (.+?)\s*$", line)
        if m:
            current = slug(m.group(1))
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    alerts = []
    for directory in (PROM, LOKI):
        for _path, _group, rule in all_rules(directory):
            if "alert" in rule:
                alerts.append(rule)
    anchors_used = set()
    for rule in alerts:
        alert = rule["alert"]
        url = str((rule.get("annotations") or {}).get("runbook_url", ""))
        anchor = slug(alert)
        anchors_used.add(anchor)
        if url != runbook_url(alert):
            report(False, f"runbook for {alert}", f"runbook_url {url!r} is not {runbook_url(alert)!r}")
            continue
        body = sections.get(anchor)
        if body is None:
            report(False, f"runbook for {alert}", f"no '## {alert}' section in runbooks.md")
            continue
        missing = [s for s in RUNBOOK_SECTIONS if not re.search(rf"^### {s}\s*$", body, re.M)]
        report(not missing, f"runbook for {alert}", f"missing sections: {', '.join(missing)}")
    orphans = sorted(a for a in sections if a not in anchors_used and a not in {"contents", "conventions"})
    report(not orphans, "every runbook belongs to an alert", f"runbooks without an alert: {orphans}")


def run_checker(items: list[dict], labels: list[str], fields: list[str]) -> tuple[int, dict, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(items, f)
        name = f.name
    try:
        p = subprocess.run(
            ["node", str(CHECKER), name, "--metric-only", "--labels", ",".join(labels),
             "--fields", ",".join(fields)],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        os.unlink(name)
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        out = {"results": [], "failed": -1}
    return p.returncode, out, p.stderr


def check_logql() -> None:
    fields, source = event_fields()
    items = []
    for path, group, rule in all_rules(LOKI):
        name = rule.get("alert") or rule.get("record")
        items.append({"id": f"{path.name}:{group['name']}:{name}", "expr": rule["expr"]})
    if not items:
        report(False, "Loki rules exist", f"no *.rules.yml in {LOKI}")
        return
    rc, out, err = run_checker(items, STREAM_LABELS, fields)
    if out.get("failed", -1) < 0:
        report(False, "LogQL checker runs", f"exit {rc}: {err.strip()[:400]}")
        return
    for r in out["results"]:
        why = ""
        if not r["ok"]:
            e = r["error"] or {}
            why = f"{e.get('line')}:{e.get('col')} {e.get('message')}"
        elif "app" not in r["stream_labels"]:
            why = "stream selector without app=..."
        report(not why, f"LogQL {r['id']} parses and uses known labels and fields ({source})", why)

    # Self-test: the same check must reject unknown fields/labels and broken queries.
    bad = [
        {"id": "unknown-field", "expr": 'sum(count_over_time({app="llm-gateway", event="response"} | json refused="refused" | refused="true" [5m]))'},
        {"id": "unknown-label", "expr": 'sum(count_over_time({app="llm-gateway", job="gateway"} [5m]))'},
        {"id": "unknown-grouping", "expr": 'sum by (user) (count_over_time({app="llm-gateway"} [5m]))'},
        {"id": "unbalanced", "expr": 'sum(count_over_time({app="llm-gateway"} [5m])'},
        {"id": "unwrap-outside-range", "expr": '{app="llm-gateway"} | json | unwrap latency_ms'},
        {"id": "log-query", "expr": '{app="llm-gateway", event="response"} | json'},
    ]
    rc, out, _ = run_checker(bad, STREAM_LABELS, fields)
    rejected = {r["id"] for r in out.get("results", []) if not r["ok"]}
    missed = [b["id"] for b in bad if b["id"] not in rejected]
    report(rc == 1 and not missed, "LogQL check rejects unknown names and broken queries",
           f"not rejected: {missed}")


def check_routes() -> None:
    table = AM / "tests" / "routes.tsv"
    config = AM / "alertmanager.yml"
    for n, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        expected, labels = line.split("\t", 1)
        args = labels.split()
        p = subprocess.run(
            ["amtool", "config", "routes", "test", f"--config.file={config}",
             f"--verify.receivers={expected}", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
        got = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        report(p.returncode == 0, f"route {labels} -> {expected}",
               f"got {got!r} (line {n}) {p.stderr.strip()[-200:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def am_binary() -> str | None:
    for name in ("prometheus-alertmanager", "alertmanager"):
        path = shutil.which(name)
        if path:
            return path
    return None


def http(method: str, url: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def check_inhibitions() -> None:
    binary = am_binary()
    if binary is None:
        report(False, "Alertmanager binary found", "install the Debian package prometheus-alertmanager")
        return
    config = load(AM / "alertmanager.yml")
    # Same routes and inhibitions; receivers keep their names but lose every integration,
    # so the test never sends anything anywhere.
    config["receivers"] = [{"name": r["name"]} for r in config["receivers"]]
    config["global"] = {"resolve_timeout": "5m"}
    cases = load(AM / "tests" / "inhibitions.yml")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "alertmanager.yml"
        cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
        for case in cases:
            run_inhibition_case(binary, cfg, Path(tmp), case)


def run_inhibition_case(binary: str, cfg: Path, tmp: Path, case: dict) -> None:
    port = free_port()
    storage = tempfile.mkdtemp(dir=tmp)
    base = f"http://127.0.0.1:{port}/api/v2"
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.path={storage}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                http("GET", f"{base}/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                    report(False, f"inhibition: {case['name']}", f"Alertmanager did not start: {err[-300:]}")
                    return
                time.sleep(0.1)
        now = datetime.now(timezone.utc)
        alerts = [{
            "labels": a["labels"],
            "annotations": {"summary": "test."},
            "startsAt": (now - timedelta(minutes=1)).isoformat(),
        } for a in case["alerts"]]
        http("POST", f"{base}/alerts", alerts)
        want = {json.dumps(a["labels"], sort_keys=True): bool(a["inhibited"]) for a in case["alerts"]}
        got: dict[str, bool] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = http("GET", f"{base}/alerts?active=true&inhibited=true&silenced=true&unprocessed=true")
            got = {json.dumps(a["labels"], sort_keys=True): bool(a["status"]["inhibitedBy"]) for a in listed}
            if got == want:
                break
            time.sleep(0.2)
        wrong = [f"{json.loads(k)['alertname']}{{...}} inhibited={got.get(k)} want {v}"
                 for k, v in want.items() if got.get(k) != v]
        report(not wrong, f"inhibition: {case['name']}", "; ".join(wrong))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


CHECKS = {
    "conventions": check_conventions,
    "coverage": check_coverage,
    "runbooks": check_runbooks,
    "logql": check_logql,
    "routes": check_routes,
    "inhibitions": check_inhibitions,
}


def main(argv: list[str]) -> int:
    names = argv or list(CHECKS)
    for name in names:
        if name not in CHECKS:
            print(f"unknown check {name}; one of {', '.join(CHECKS)}", file=sys.stderr)
            return 2
        CHECKS[name]()
    return 0 if all(ok for ok, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

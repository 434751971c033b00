#!/usr/bin/env python3
"""Lint the Grafana dashboards in dashboards/ and what is generated from them.

Checks, per dashboard:
  json        valid JSON, uid = file name, title, schemaVersion >= 39, id null
  ids         every panel (rows included) has a unique integer id
  grid        every panel has a gridPos inside the 24 columns; no two panels overlap
  datasource  no hard-coded datasource: every `datasource` is a `${var}` of a datasource
              variable of the same type (or Grafana's built-in annotation source)
  variables   every variable is used; every `$var` used is defined (or a Grafana built-in)
  promql      every PromQL expression (targets, annotations, label_values() of variables)
              parses with promtool, after substituting Grafana variables
  metrics     every metric an expression names is in dashboards/known-metrics.txt
  logql       every LogQL expression parses (tools/logql/check.mjs, Grafana's grammar), its
              stream labels are the log-shipper's, its fields are event fields
  conventions range windows are $__rate_interval / $__range / $__auto (never a fixed `5m`);
              every division by a series is written `num / (den > 0)`
  configmap   deploy/k8s/base/dashboards/<uid>.yaml holds the same dashboard, with the
              grafana_dashboard label
and once: alert-panels.json points at existing panels whose thresholds match (and at alerts
that exist in logql-rules/ when it exists), every dashboard_url in logql-rules/ points at an
existing panel, the provisioning files, the gateway/log-shipper sources name the metrics,
and a few panel expressions give the expected values on synthetic series (promtool test).

`--self-test` first feeds the lint small broken dashboards and checks it reports each defect.
Prints one line per check and ends with `N passed, M failed`; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
K8S_DIR = REPO / "deploy" / "k8s" / "base" / "dashboards"
LOGQL_CHECK = REPO / "tools" / "logql" / "check.mjs"
DASHBOARDS = ("llm-gateway", "vllm", "triton")

GRID_WIDTH = 24
MIN_SCHEMA = 39
BUILTIN_DS_UIDS = {"-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana"}

# Grafana built-in variables and what the lint substitutes for them before parsing.
BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__auto": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
ALLOWED_WINDOWS = {"$__rate_interval", "$__range", "$__auto", "$__interval"}

# Loki stream labels the log-shipper sets, and the fields of a gateway event.
LOKI_LABELS = ["app", "event", "level", "model", "tenant", "parse_error"]
EVENT_FIELDS = [
    "ts", "level", "event", "request_id", "route", "model", "tenant", "upstream", "stream",
    "status", "finish_reason", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "refusal", "refusal_reason", "cost_usd", "error_type", "endpoint", "schema_version",
    "refusal_excerpt",
]

VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")

Json = dict[str, Any]


# --------------------------------------------------------------------------------------
# Results


@dataclass
class Report:
    passed: int = 0
    failed: int = 0

    def check(self, name: str, errors: list[str]) -> bool:
        if errors:
            self.failed += 1
            print(f"FAIL {name}")
            for e in errors:
                print(f"     - {e}")
        else:
            self.passed += 1
            print(f"ok   {name}")
        return not errors


# --------------------------------------------------------------------------------------
# Walking a dashboard


def all_panels(d: Json) -> Iterator[Json]:
    for p in d.get("panels", []):
        yield p
        for c in p.get("panels", []) or []:
            yield c


def variables(d: Json) -> list[Json]:
    return list(d.get("templating", {}).get("list", []))


def ds_vars(d: Json) -> dict[str, str]:
    """datasource variable name -> datasource type"""
    return {v["name"]: v.get("query", "") for v in variables(d) if v.get("type") == "datasource"}


def var_ref(uid: Any) -> str | None:
    if not isinstance(uid, str):
        return None
    m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
    return (m.group(1) or m.group(2)) if m else None


@dataclass
class Expr:
    id: str  # dashboard/panel/ref, for messages
    lang: str  # promql | logql
    expr: str  # as written in the dashboard


def ds_type(d: Json, ds: Any) -> str | None:
    if isinstance(ds, dict):
        if ds.get("type") in ("prometheus", "loki"):
            return ds["type"]
        name = var_ref(ds.get("uid"))
        return ds_vars(d).get(name or "")
    name = var_ref(ds)
    return ds_vars(d).get(name or "") if name else None


def expressions(d: Json, name: str) -> list[Expr]:
    out: list[Expr] = []
    for p in all_panels(d):
        for t in p.get("targets", []) or []:
            kind = ds_type(d, t.get("datasource") or p.get("datasource"))
            if "expr" in t and kind in ("prometheus", "loki"):
                lang = "promql" if kind == "prometheus" else "logql"
                out.append(Expr(f"{name}/panel {p.get('id')}/{t.get('refId')}", lang, t["expr"]))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr") and ds_type(d, a.get("datasource")) in ("prometheus", "loki"):
            lang = "promql" if ds_type(d, a.get("datasource")) == "prometheus" else "logql"
            out.append(Expr(f"{name}/annotation {a.get('name')}", lang, a["expr"]))
    for v in variables(d):
        if v.get("type") != "query" or ds_type(d, v.get("datasource")) != "prometheus":
            continue
        q = v.get("query")
        text = q.get("query", "") if isinstance(q, dict) else str(q or "")
        text = text or v.get("definition", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, re.S)
        if m:
            out.append(Expr(f"{name}/variable {v['name']}", "promql", m.group(1)))
        m = re.fullmatch(r"\s*query_result\((.*)\)\s*", text, re.S)
        if m:
            out.append(Expr(f"{name}/variable {v['name']}", "promql", m.group(1)))
    return out


def substitute(expr: str) -> str:
    """Grafana variables -> text a parser accepts: built-ins -> durations, user vars -> `.*`
    (they appear only inside regex matchers, `=~"$model"`)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return BUILTINS.get(name, ".*")

    return VAR_RE.sub(repl, expr)


# --------------------------------------------------------------------------------------
# Checks that need no external tool


def check_json(d: Json, name: str) -> list[str]:
    errs = []
    if d.get("uid") != name:
        errs.append(f"uid {d.get('uid')!r} != file name {name!r}")
    if not d.get("title"):
        errs.append("no title")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < MIN_SCHEMA:
        errs.append(f"schemaVersion {d.get('schemaVersion')} < {MIN_SCHEMA} (Grafana 11)")
    if d.get("id") is not None:
        errs.append("id must be null so the dashboard imports into any Grafana")
    if not isinstance(d.get("panels"), list) or not d["panels"]:
        errs.append("no panels")
    return errs


def check_ids(d: Json) -> list[str]:
    seen: dict[int, str] = {}
    errs = []
    for p in all_panels(d):
        pid = p.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            errs.append(f"panel {p.get('title')!r} has no integer id")
            continue
        if pid in seen:
            errs.append(f"duplicate panel id {pid}: {seen[pid]!r} and {p.get('title')!r}")
        seen[pid] = p.get("title", "")
    return errs


def check_grid(d: Json) -> list[str]:
    errs = []
    boxes: list[tuple[int, int, int, int, Json]] = []
    for p in all_panels(d):
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            errs.append(f"panel {p.get('id')} has no complete gridPos")
            continue
        if g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > GRID_WIDTH:
            errs.append(f"panel {p.get('id')} gridPos {g} outside the {GRID_WIDTH}-column grid")
        boxes.append((g["x"], g["y"], g["w"], g["h"], p))
    for i, (x1, y1, w1, h1, p1) in enumerate(boxes):
        for x2, y2, w2, h2, p2 in boxes[i + 1 :]:
            if x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1:
                errs.append(f"panels {p1.get('id')} and {p2.get('id')} overlap")
    return errs


def _walk_datasources(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                yield path, v
            yield from _walk_datasources(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_datasources(v, f"{path}[{i}]")


def check_datasources(d: Json) -> list[str]:
    errs = []
    dsv = ds_vars(d)
    for path, ds in _walk_datasources(d, "$"):
        if ds is None:
            continue
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        if isinstance(uid, str) and uid in BUILTIN_DS_UIDS:
            continue
        ref = var_ref(uid)
        if ref is None:
            errs.append(f"{path}: hard-coded datasource {uid!r}; use a datasource variable")
            continue
        if ref not in dsv:
            errs.append(f"{path}: ${{{ref}}} is not a datasource variable")
            continue
        kind = ds.get("type") if isinstance(ds, dict) else None
        if kind and kind != dsv[ref]:
            errs.append(f"{path}: type {kind} but ${{{ref}}} selects {dsv[ref]}")
    return errs


def check_variables(d: Json) -> list[str]:
    errs = []
    names = [v.get("name") for v in variables(d)]
    defined = set(names)
    for n in names:
        if names.count(n) > 1:
            errs.append(f"variable {n} defined twice")
    for v in variables(d):
        rest = copy.deepcopy(d)
        rest["templating"]["list"] = [x for x in variables(d) if x is not v]
        used = {m.group(1) or m.group(2) or m.group(3) for m in VAR_RE.finditer(json.dumps(rest))}
        if v.get("name") not in used:
            errs.append(f"variable {v.get('name')} is never used")
    text = json.dumps(d)
    for m in VAR_RE.finditer(text):
        n = m.group(1) or m.group(2) or m.group(3)
        if n not in defined and n not in BUILTINS and not n.startswith("__"):
            errs.append(f"${n} is used but not defined")
    return sorted(set(errs))


def _skip_strings(s: str) -> str:
    """Blank out quoted strings so operators inside them are not seen."""
    return re.sub(r'"(?:\\.|[^"\\])*"|`[^`]*`', lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', s)


def check_conventions(exprs: list[Expr]) -> list[str]:
    errs = []
    for e in exprs:
        s = _skip_strings(e.expr)
        for m in re.finditer(r"\[([^\]]*)\]", s):
            window = m.group(1).strip()
            if window not in ALLOWED_WINDOWS:
                errs.append(f"{e.id}: range [{window}] is fixed; use $__rate_interval "
                            "($__auto for Loki) or $__range")
        for m in re.finditer(r"/", s):
            rest = s[m.end() :].lstrip()
            if re.match(r"[0-9.]", rest):
                continue  # division by a number
            if not rest.startswith("("):
                errs.append(f"{e.id}: division by a bare series; write num / (den > 0)")
                continue
            depth = 0
            for i, ch in enumerate(rest):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    inner = rest[1:i].strip()
                    if not re.search(r">\s*0$", inner):
                        errs.append(f"{e.id}: denominator not guarded; write num / (den > 0)")
                    break
    return errs


# --------------------------------------------------------------------------------------
# PromQL: promtool for syntax, a token scan for metric names


TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<num>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?:[a-zA-Z]+\d*)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/%^@])
    """,
    re.X,
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression that promtool has already accepted."""
    toks: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = TOKEN_RE.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize at {pos}: {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            toks.append((m.lastgroup or "", m.group(0)))
    names: set[str] = set()
    brace = bracket = 0
    i = 0
    while i < len(toks):
        kind, val = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if val == "{":
            brace += 1
        elif val == "}":
            brace -= 1
        elif val == "[":
            bracket += 1
        elif val == "]":
            bracket -= 1
        elif brace:
            if val == "__name__" and nxt == "=" and i + 2 < len(toks) and toks[i + 2][0] == "str":
                names.add(toks[i + 2][1][1:-1])
        elif bracket or kind != "ident":
            pass
        elif val.lower() in GROUPING:
            if nxt == "(":
                depth = 0
                while i < len(toks):
                    depth += toks[i][1] == "("
                    depth -= toks[i][1] == ")"
                    if toks[i][1] == ")" and depth == 0:
                        break
                    i += 1
        elif val.lower() in KEYWORDS or nxt == "(" or nxt.lower() in ("by", "without"):
            pass
        else:
            names.add(val)
        i += 1
    return names


def promtool_check(exprs: list[Expr]) -> dict[str, str]:
    """id -> error for expressions promtool rejects."""
    if not exprs:
        return {}
    promtool = shutil.which("promtool")
    if not promtool:
        return {e.id: "promtool not installed (apt-get install prometheus)" for e in exprs}
    rules = [{"record": f"lint:expr_{i}", "expr": substitute(e.expr)} for i, e in enumerate(exprs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "dashboards.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "lint", "rules": rules}]}, width=1 << 20))
        r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                           timeout=120)
    out: dict[str, str] = {}
    if r.returncode == 0:
        return out
    text = r.stdout + r.stderr
    for m in re.finditer(r'"lint:expr_(\d+)": (.*)', text):
        out[exprs[int(m.group(1))].id] = m.group(2).strip()
    if not out:  # failed without naming a rule: blame all, show the output
        return {e.id: text.strip()[-300:] for e in exprs}
    return out


def load_known_metrics(path: pathlib.Path = HERE / "known-metrics.txt") -> set[str]:
    known: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        known.add(parts[0])
        if len(parts) > 1 and parts[1] == "histogram":
            known.update(parts[0] + s for s in ("_bucket", "_sum", "_count"))
    return known


def recorded_names() -> set[str]:
    """Series recorded by the rules in logql-rules/ (dashboards may read them)."""
    out: set[str] = set()
    for p in rule_files():
        try:
            docs = list(yaml.safe_load_all(p.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            groups = doc.get("groups") if isinstance(doc, dict) else None
            for g in groups if isinstance(groups, list) else []:
                for r in (g or {}).get("rules", []) or []:
                    if isinstance(r, dict) and r.get("record"):
                        out.add(r["record"])
    return out


def check_metrics(exprs: list[Expr], rejected: dict[str, str], known: set[str]) -> list[str]:
    errs = []
    for e in exprs:
        if e.id in rejected:
            continue
        for name in sorted(metric_names(substitute(e.expr))):
            if name not in known:
                errs.append(f"{e.id}: unknown metric {name}")
    return errs


# --------------------------------------------------------------------------------------
# LogQL: tools/logql/check.mjs


def logql_check(exprs: list[Expr]) -> dict[str, str]:
    if not exprs:
        return {}
    node = shutil.which("node")
    if not node or not LOGQL_CHECK.exists():
        return {e.id: f"LogQL checker unavailable (node, {LOGQL_CHECK.relative_to(REPO)})" for e in exprs}
    items = [{"id": e.id, "expr": substitute(e.expr)} for e in exprs]
    r = subprocess.run(
        [node, str(LOGQL_CHECK), "-", "--labels", ",".join(LOKI_LABELS),
         "--fields", ",".join(EVENT_FIELDS)],
        input=json.dumps(items), capture_output=True, text=True, timeout=120,
    )
    try:
        results = json.loads(r.stdout)["results"]
    except (ValueError, KeyError):
        return {e.id: f"LogQL checker failed: {r.stderr.strip()[-300:]}" for e in exprs}
    out = {}
    for res in results:
        if res.get("ok"):
            continue
        err = res.get("error") or {}
        msg = err.get("message") or ""
        extra = []
        if res.get("unknown_labels"):
            extra.append(f"unknown stream labels {res['unknown_labels']}")
        if res.get("unknown_fields"):
            extra.append(f"unknown fields {res['unknown_fields']}")
        where = f"{err.get('line')}:{err.get('col')} " if err else ""
        out[res["id"]] = (where + "; ".join([m for m in [msg, *extra] if m])).strip()
    return out


# --------------------------------------------------------------------------------------
# Whole-dashboard lint


@dataclass
class Linted:
    name: str
    checks: dict[str, list[str]]


def lint_dashboards(dashboards: dict[str, Json], known: set[str],
                    configmaps: dict[str, str] | None = None) -> list[Linted]:
    """Run every per-dashboard check; external tools run once over all expressions."""
    exprs = {n: expressions(d, n) for n, d in dashboards.items()}
    prom_all = [e for es in exprs.values() for e in es if e.lang == "promql"]
    loki_all = [e for es in exprs.values() for e in es if e.lang == "logql"]
    prom_err = promtool_check(prom_all)
    loki_err = logql_check(loki_all)
    out = []
    for n, d in dashboards.items():
        es = exprs[n]
        checks = {
            "json": check_json(d, n),
            "ids": check_ids(d),
            "grid": check_grid(d),
            "datasource": check_datasources(d),
            "variables": check_variables(d),
            "promql": [f"{e.id}: {prom_err[e.id]}" for e in es if e.id in prom_err],
            "metrics": check_metrics([e for e in es if e.lang == "promql"], prom_err, known),
            "logql": [f"{e.id}: {loki_err[e.id]}" for e in es if e.id in loki_err],
            "conventions": check_conventions(es),
        }
        if configmaps is not None:
            checks["configmap"] = check_configmap(n, d, configmaps.get(n))
        out.append(Linted(n, checks))
    return out


def check_configmap(name: str, d: Json, text: str | None) -> list[str]:
    if text is None:
        return [f"no ConfigMap {K8S_DIR.relative_to(REPO)}/{name}.yaml"]
    if len(text.encode()) > 256 * 1024:
        # kubectl apply (client-side) copies the object into an annotation capped at 256 KiB.
        return [f"ConfigMap is {len(text.encode())} bytes, over the 256 KiB kubectl apply limit"]
    try:
        cm = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"ConfigMap is not YAML: {e}"]
    errs = []
    if cm.get("kind") != "ConfigMap":
        errs.append("kind is not ConfigMap")
    if (cm.get("metadata", {}).get("labels") or {}).get("grafana_dashboard") != "1":
        errs.append('label grafana_dashboard: "1" missing')
    data = cm.get("data") or {}
    if f"{name}.json" not in data:
        errs.append(f"data has no key {name}.json")
    else:
        try:
            if json.loads(data[f"{name}.json"]) != d:
                errs.append("ConfigMap dashboard differs from the JSON file (run generate.py)")
        except ValueError as e:
            errs.append(f"ConfigMap dashboard is not JSON: {e}")
    return errs


# --------------------------------------------------------------------------------------
# Cross-file checks


def rule_files() -> list[pathlib.Path]:
    base = REPO / "logql-rules"
    if not base.is_dir():
        return []
    return sorted(p for p in base.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def rule_alerts() -> dict[str, tuple[pathlib.Path, str]]:
    """alert name -> (rule file, expr)"""
    out: dict[str, tuple[pathlib.Path, str]] = {}
    for p in rule_files():
        try:
            docs = list(yaml.safe_load_all(p.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            groups = doc.get("groups") or (doc.get("spec") or {}).get("groups") or []
            for g in groups if isinstance(groups, list) else []:
                for r in (g or {}).get("rules", []) or []:
                    if isinstance(r, dict) and r.get("alert"):
                        out[r["alert"]] = (p, str(r.get("expr", "")))
    return out


# A literal right of a comparison, not the start of an arithmetic term (`> 1/60`).
COMPARISON_RE = re.compile(
    r"(?:[<>]=?|==)\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?![0-9.eE])(?!\s*[/*])"
)


def check_alert_map(dashboards: dict[str, Json], amap: Json,
                    alerts_in_rules: dict[str, tuple[pathlib.Path, str]] | None) -> list[str]:
    errs = []
    for alert, e in sorted(amap.get("alerts", {}).items()):
        d = dashboards.get(e.get("dashboard_uid"))
        if d is None:
            errs.append(f"{alert}: unknown dashboard {e.get('dashboard_uid')}")
            continue
        panel = next((p for p in all_panels(d) if p.get("id") == e.get("panel_id")), None)
        if panel is None:
            errs.append(f"{alert}: {e['dashboard_uid']} has no panel {e.get('panel_id')}")
            continue
        if panel.get("title") != e.get("panel_title"):
            errs.append(f"{alert}: panel {e['panel_id']} is {panel.get('title')!r}")
        steps = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("thresholds", {})
        values = [s.get("value") for s in steps.get("steps", [])]
        if e.get("threshold") not in values:
            errs.append(f"{alert}: threshold {e.get('threshold')} not among panel thresholds {values}")
        if e.get("url") != f"/d/{e['dashboard_uid']}?viewPanel={e['panel_id']}":
            errs.append(f"{alert}: url {e.get('url')} does not match uid and panel id")
        if alerts_in_rules is not None:
            if alert not in alerts_in_rules:
                errs.append(f"{alert}: no such alert in logql-rules/")
            elif e.get("threshold") is not None:
                levels = {float(x) for x in COMPARISON_RE.findall(alerts_in_rules[alert][1])}
                if float(e["threshold"]) not in levels:
                    errs.append(f"{alert}: threshold {e['threshold']} is not a level its rule "
                                f"compares with {sorted(levels)}")
    return errs


URL_RE = re.compile(r"/d/([A-Za-z0-9_-]+)(?:/[A-Za-z0-9_-]*)?\?[^\s\"']*?viewPanel=(?:panel-)?(\d+)")


def check_rule_links(dashboards: dict[str, Json], files: list[pathlib.Path]) -> list[str]:
    errs = []
    for p in files:
        for m in URL_RE.finditer(p.read_text()):
            uid, pid = m.group(1), int(m.group(2))
            d = dashboards.get(uid)
            if d is None or not any(x.get("id") == pid for x in all_panels(d)):
                errs.append(f"{p.relative_to(REPO)}: {m.group(0)} points at no panel")
    return errs


def check_provisioning() -> list[str]:
    errs = []
    ds_file = HERE / "provisioning" / "datasources" / "datasources.yaml"
    db_file = HERE / "provisioning" / "dashboards" / "dashboards.yaml"
    try:
        ds = yaml.safe_load(ds_file.read_text())
        db = yaml.safe_load(db_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        return [str(e)]
    want = {"prometheus": "http://prometheus:9090", "loki": "http://loki:3100",
            "alertmanager": "http://alertmanager:9093"}
    got = {x.get("type"): x for x in ds.get("datasources", [])}
    for kind, url in want.items():
        if kind not in got:
            errs.append(f"datasources.yaml: no {kind} datasource")
        elif got[kind].get("url") != url or not got[kind].get("uid"):
            errs.append(f"datasources.yaml: {kind} needs url {url} and a fixed uid")
    providers = db.get("providers", [])
    if not any(p.get("type") == "file" and (p.get("options") or {}).get("path") == "/var/lib/grafana/dashboards"
               for p in providers):
        errs.append("dashboards.yaml: no file provider for /var/lib/grafana/dashboards")
    return errs


def check_sources_name_metrics(known: set[str]) -> tuple[list[str], list[str]]:
    """Gateway / log-shipper metric names appear in their crate sources (once they exist)."""
    errs, notes = [], []
    for prefix, crate in (("llm_gateway_", "gateway"), ("log_shipper_", "log-shipper")):
        src = REPO / crate / "src"
        if not (src / "metrics.rs").exists():
            notes.append(f"{crate}/src/metrics.rs not present: {prefix}* names not cross-checked")
            continue
        text = "\n".join(p.read_text(errors="replace") for p in src.rglob("*.rs"))
        for name in sorted(n for n in known if n.startswith(prefix)):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in text else name
            stem = re.sub(r"_total$", "", base)
            short = stem[len(prefix):]
            if stem in text or f'"{short}"' in text:
                continue
            errs.append(f"{name}: not found in {crate}/src")
    return sorted(set(errs)), notes


# --------------------------------------------------------------------------------------
# Semantic checks: evaluate a few panel expressions on synthetic series with promtool

GW = 'route="/v1/chat/completions", model="m", tenant="t"'
SEMANTIC: list[Json] = [
    {
        "name": "gateway refusal rate (metrics) = refusals / requests",
        "panel": ("llm-gateway", 501, "A"),
        "series": [
            (f'llm_gateway_requests_total{{{GW}, status="200", finish_reason="stop"}}', "0+60x20"),
            ('llm_gateway_refusals_total{model="m", tenant="t", kind="full"}', "0+15x20"),
        ],
        "expect": [("{}", 0.25)],
    },
    {
        "name": "gateway error ratio counts 5xx and mid-stream errors once each",
        "panel": ("llm-gateway", 204, "A"),
        "series": [
            (f'llm_gateway_requests_total{{{GW}, status="200", finish_reason="stop"}}', "0+50x20"),
            (f'llm_gateway_requests_total{{{GW}, status="502", finish_reason="none"}}', "0+10x20"),
            (f'llm_gateway_requests_total{{{GW}, status="200", finish_reason="error"}}', "0+10x20"),
            (f'llm_gateway_requests_total{{{GW}, status="500", finish_reason="error"}}', "0+10x20"),
            ('llm_gateway_requests_total{route="/v1/chat/completions", model="ok", tenant="t", '
             'status="200", finish_reason="stop"}', "0+60x20"),
        ],
        "expect": [('{model="m"}', 0.375), ('{model="ok"}', 0.0)],
    },
    {
        "name": "vLLM error ratio by model, 0 for a model without errors",
        "panel": ("vllm", 302, "A"),
        "series": [
            ('vllm:request_success_total{job="vllm", instance="a", model_name="m", finished_reason="stop"}', "0+90x20"),
            ('vllm:request_success_total{job="vllm", instance="a", model_name="m", finished_reason="error"}', "0+10x20"),
            ('vllm:request_success_total{job="vllm", instance="a", model_name="ok", finished_reason="stop"}', "0+10x20"),
        ],
        "expect": [('{model_name="m"}', 0.1), ('{model_name="ok"}', 0.0)],
    },
    {
        "name": "DCGM memory ratio with and without FB_RESERVED",
        "panel": ("vllm", 404, "A"),
        "series": [
            ('DCGM_FI_DEV_FB_USED{gpu="0", UUID="GPU-0"}', "30x20"),
            ('DCGM_FI_DEV_FB_FREE{gpu="0", UUID="GPU-0"}', "10x20"),
            ('DCGM_FI_DEV_FB_RESERVED{gpu="0", UUID="GPU-0"}', "10x20"),
            ('DCGM_FI_DEV_FB_USED{gpu="1", UUID="GPU-1"}', "30x20"),
            ('DCGM_FI_DEV_FB_FREE{gpu="1", UUID="GPU-1"}', "10x20"),
        ],
        "expect": [('{gpu="0", UUID="GPU-0"}', 0.6), ('{gpu="1", UUID="GPU-1"}', 0.75)],
    },
    {
        "name": "Triton queue time per request in seconds",
        "panel": ("triton", 301, "A"),
        "series": [
            ('nv_inference_queue_duration_us{model="m", version="1", instance="t"}', "0+120000000x20"),
            ('nv_inference_request_success{model="m", version="1", instance="t"}', "0+60x20"),
        ],
        "expect": [('{model="m"}', 2.0)],
    },
    {
        "name": "vLLM HTTP 5xx share per server: generation routes only, 0 without 5xx",
        "panel": ("vllm", 505, "A"),
        "series": [
            ('http_requests_total{job="vllm", instance="a", handler="/v1/chat/completions", method="POST", status="2xx"}', "0+45x20"),
            ('http_requests_total{job="vllm", instance="a", handler="/v1/chat/completions", method="POST", status="5xx"}', "0+15x20"),
            ('http_requests_total{job="vllm", instance="a", handler="/v1/models", method="GET", status="2xx"}', "0+600x20"),
            ('http_requests_total{job="vllm", instance="b", handler="/v1/completions", method="POST", status="2xx"}', "0+60x20"),
        ],
        "expect": [('{instance="a"}', 0.25), ('{instance="b"}', 0.0)],
    },
    {
        "name": "vLLM truncated share by model, 0 for a model without length finishes",
        "panel": ("vllm", 206, "A"),
        "series": [
            ('vllm:request_success_total{job="vllm", instance="a", model_name="m", finished_reason="stop"}', "0+30x20"),
            ('vllm:request_success_total{job="vllm", instance="a", model_name="m", finished_reason="length"}', "0+10x20"),
            ('vllm:request_success_total{job="vllm", instance="a", model_name="ok", finished_reason="stop"}', "0+10x20"),
        ],
        "expect": [('{model_name="m"}', 0.25), ('{model_name="ok"}', 0.0)],
    },
    {
        "name": "vLLM p95 latency from buckets",
        "panel": ("vllm", 201, "B"),
        "series": [
            ('vllm:e2e_request_latency_seconds_bucket{job="vllm", instance="a", model_name="m", le="5.0"}', "0+50x20"),
            ('vllm:e2e_request_latency_seconds_bucket{job="vllm", instance="a", model_name="m", le="10.0"}', "0+100x20"),
            ('vllm:e2e_request_latency_seconds_bucket{job="vllm", instance="a", model_name="m", le="+Inf"}', "0+100x20"),
        ],
        "expect": [("{}", 9.5)],
    },
]


def panel_expr(dashboards: dict[str, Json], uid: str, pid: int, ref: str) -> str | None:
    for p in all_panels(dashboards.get(uid, {})):
        if p.get("id") == pid:
            for t in p.get("targets", []):
                if t.get("refId") == ref:
                    return t.get("expr")
    return None


def check_semantic(dashboards: dict[str, Json], case: Json) -> list[str]:
    expr = panel_expr(dashboards, *case["panel"])
    if expr is None:
        return [f"no target {case['panel']}"]
    promtool = shutil.which("promtool")
    if not promtool:
        return ["promtool not installed (apt-get install prometheus)"]
    test = {
        "rule_files": ["empty.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case["series"]],
            "promql_expr_test": [{
                # Rounded to 1e-3: promtool compares floats exactly.
                "expr": f"round({substitute(expr)}, 0.001)",
                "eval_time": "10m",
                "exp_samples": [{"labels": lab, "value": val} for lab, val in case["expect"]],
            }],
        }],
    }
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / "empty.yml").write_text("groups: []\n")
        path = pathlib.Path(tmp) / "test.yml"
        path.write_text(yaml.safe_dump(test, width=1 << 20))
        r = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True,
                           timeout=60, cwd=tmp)
    if r.returncode != 0:
        return [(r.stdout + r.stderr).strip().replace(tmp, ".")[-800:]]
    return []


# --------------------------------------------------------------------------------------
# Self-tests: the lint must catch each defect


def _good_dashboard() -> Json:
    prom = {"type": "prometheus", "uid": "${prometheus}"}
    loki = {"type": "loki", "uid": "${loki}"}
    return {
        "uid": "selftest", "title": "t", "id": None, "schemaVersion": 39,
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "prometheus", "type": "datasource", "query": "prometheus"},
            {"name": "loki", "type": "datasource", "query": "loki"},
            {"name": "model", "type": "query", "datasource": prom,
             "definition": "label_values(llm_gateway_requests_total, model)",
             "query": {"query": "label_values(llm_gateway_requests_total, model)"}},
        ]},
        "panels": [
            {"id": 1, "type": "row", "title": "r", "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "panels": []},
            {"id": 2, "type": "timeseries", "title": "a", "datasource": prom,
             "gridPos": {"h": 8, "w": 12, "x": 0, "y": 1},
             "targets": [{"refId": "A", "datasource": prom,
                          "expr": 'sum(rate(llm_gateway_refusals_total{model=~"$model"}[$__rate_interval])) / '
                                  '(sum(rate(llm_gateway_requests_total{model=~"$model"}[$__rate_interval])) > 0)'}]},
            {"id": 3, "type": "timeseries", "title": "b", "datasource": loki,
             "gridPos": {"h": 8, "w": 12, "x": 12, "y": 1},
             "targets": [{"refId": "A", "datasource": loki,
                          "expr": 'sum by (tenant) (count_over_time({app="llm-gateway", model=~"$model"} '
                                  '| json | refusal="true" [$__auto]))'}]},
        ],
    }


def _mutate(fn: Callable[[Json], None]) -> Json:
    d = _good_dashboard()
    fn(d)
    return d


def _set_expr(pid: int, expr: str) -> Callable[[Json], None]:
    def f(d: Json) -> None:
        next(p for p in d["panels"] if p["id"] == pid)["targets"][0]["expr"] = expr
    return f


SELF_TESTS: list[tuple[str, Callable[[Json], None] | None, str, str]] = [
    # (name, mutation, check that must fail, substring of its error)
    ("good dashboard passes", None, "", ""),
    ("overlapping panels", lambda d: d["panels"][2]["gridPos"].update(x=6), "grid", "overlap"),
    ("panel outside the grid", lambda d: d["panels"][2]["gridPos"].update(w=16), "grid", "outside"),
    ("duplicate panel id", lambda d: d["panels"][2].update(id=2), "ids", "duplicate panel id 2"),
    ("hard-coded datasource uid",
     lambda d: d["panels"][1]["targets"][0].update(datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
     "datasource", "hard-coded"),
    ("datasource name string", lambda d: d["panels"][1].update(datasource="Prometheus"), "datasource", "hard-coded"),
    ("unknown metric", _set_expr(2, "sum(rate(vllm:gpu_cache_usage_perc_total[$__rate_interval]))"),
     "metrics", "unknown metric vllm:gpu_cache_usage_perc_total"),
    ("bad PromQL", _set_expr(2, "sum(rate(llm_gateway_requests_total[$__rate_interval])"), "promql", "parse"),
    ("bad PromQL in a variable",
     lambda d: d["templating"]["list"][2].update(definition="label_values(llm_gateway_requests_total{, model)",
                                                 query={"query": "label_values(llm_gateway_requests_total{, model)"}),
     "promql", "variable model"),
    ("bad LogQL", _set_expr(3, 'sum(count_over_time({app="llm-gateway"} | json [$__auto])'), "logql", "panel 3"),
    ("unknown Loki stream label", _set_expr(3, 'sum(count_over_time({app="llm-gateway", pod="x"} [$__auto]))'),
     "logql", "pod"),
    ("unused variable", lambda d: d["templating"]["list"].append(
        {"name": "tenant", "type": "query", "datasource": {"type": "prometheus", "uid": "${prometheus}"},
         "definition": "label_values(llm_gateway_requests_total, tenant)"}), "variables", "tenant is never used"),
    ("undefined variable", _set_expr(2, 'sum(rate(llm_gateway_requests_total{tenant=~"$tenant", model=~"$model"}'
                                        '[$__rate_interval]))'), "variables", "$tenant is used but not defined"),
    ("fixed rate window", _set_expr(2, 'sum(rate(llm_gateway_requests_total{model=~"$model"}[5m]))'),
     "conventions", "[5m]"),
    ("unguarded ratio", _set_expr(2, 'sum(rate(llm_gateway_refusals_total{model=~"$model"}[$__rate_interval])) / '
                                     'sum(rate(llm_gateway_requests_total[$__rate_interval]))'),
     "conventions", "bare series"),
    ("wrong uid", lambda d: d.update(uid="other"), "json", "file name"),
    ("old schema", lambda d: d.update(schemaVersion=16), "json", "schemaVersion"),
]


def run_self_tests(report: Report, known: set[str]) -> None:
    cases = [(n, _mutate(m) if m else _good_dashboard(), c, s) for n, m, c, s in SELF_TESTS]
    dashboards = {f"selftest{i}": d for i, (_, d, _, _) in enumerate(cases)}
    for key, d in dashboards.items():
        if d["uid"] == "selftest":
            d["uid"] = key
    linted = {x.name: x for x in lint_dashboards(dashboards, known)}
    for i, (name, _, check, needle) in enumerate(cases):
        res = linted[f"selftest{i}"].checks
        problems = []
        if not check:
            problems = [f"{c}: {e}" for c, es in res.items() for e in es]
        else:
            if not any(needle in e for e in res[check]):
                problems.append(f"{check} did not report {needle!r}: {res[check]}")
            others = [f"{c}: {e}" for c, es in res.items() if c != check for e in es]
            if others:
                problems.append(f"unexpected other findings: {others}")
        report.check(f"self-test: {name}", problems)

    # Pieces with their own small fixtures.
    names = metric_names('sum by (le, model) (rate(a:b_bucket{__name__!="x", le="1.0"}[5m])) '
                         '/ on (model) group_left (x) (topk(3, c) > 0) or vector(1) + d offset 5m')
    report.check("self-test: metric name scan",
                 [] if names == {"a:b_bucket", "c", "d"} else [f"got {sorted(names)}"])
    amap = {"alerts": {"X": {"dashboard_uid": "g", "panel_id": 2, "panel_title": "a",
                             "threshold": 0.2, "url": "/d/g?viewPanel=2"}}}
    g = _good_dashboard()
    errs = check_alert_map({"g": g}, amap, {"Y": (HERE, "x > 0.2")})
    report.check("self-test: alert map catches a missing threshold and alert",
                 [] if any("threshold 0.2" in e for e in errs) and any("no such alert" in e for e in errs)
                 else [f"got {errs}"])
    g["panels"][1]["fieldConfig"] = {"defaults": {"thresholds": {"steps": [{"value": None}, {"value": 0.2}]}}}
    errs = check_alert_map({"g": g}, amap, {"X": (HERE, "ratio > 0.25 and rate > 1/60")})
    report.check("self-test: alert map catches a threshold the rule does not use",
                 [] if len(errs) == 1 and "[0.25]" in errs[0] else [f"got {errs}"])
    wrong = dict(SEMANTIC[0], expect=[("{}", 0.5)])
    errs = check_semantic({"llm-gateway": json.loads((HERE / "llm-gateway.json").read_text())}, wrong)
    report.check("self-test: a wrong expected value fails the value check",
                 [] if errs and "2.5E-01" in errs[0] else [f"got {errs}"])
    bad_cm = "kind: ConfigMap\nmetadata:\n  labels: {}\ndata:\n  selftest.json: '{}'\n"
    errs = check_configmap("selftest", g, bad_cm)
    report.check("self-test: ConfigMap drift and missing label",
                 [] if len(errs) == 2 else [f"got {errs}"])


# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Lint the Grafana dashboards.")
    ap.add_argument("--self-test", action="store_true", help="also test the lint itself")
    args = ap.parse_args(argv)
    report = Report()
    known = load_known_metrics() | recorded_names()

    if args.self_test:
        run_self_tests(report, known)

    dashboards: dict[str, Json] = {}
    for n in DASHBOARDS:
        path = HERE / f"{n}.json"
        try:
            dashboards[n] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            report.check(f"{n}: json", [f"{path.name}: {e}"])
    extra = sorted(p.stem for p in HERE.glob("*.json"))
    unexpected = [x for x in extra if x not in DASHBOARDS and x != "alert-panels"]
    report.check("dashboards/*.json are the known dashboards",
                 [f"unexpected {x}.json (add it to DASHBOARDS)" for x in unexpected])

    configmaps = {n: (K8S_DIR / f"{n}.yaml").read_text() if (K8S_DIR / f"{n}.yaml").exists() else None
                  for n in dashboards}
    for res in lint_dashboards(dashboards, known, configmaps):  # type: ignore[arg-type]
        for check, errs in res.checks.items():
            report.check(f"{res.name}: {check}", errs)

    try:
        amap = json.loads((HERE / "alert-panels.json").read_text())
    except (OSError, ValueError) as e:
        amap = {}
        report.check("alert-panels.json", [str(e)])
    files = rule_files()
    in_rules = rule_alerts() if files else None
    if in_rules is None:
        print("note logql-rules/ not present: alert names not cross-checked")
    else:
        unlinked = sorted(set(in_rules) - set(amap.get("alerts", {})) - {"Watchdog"})
        if unlinked:
            print(f"note alerts without a panel link: {', '.join(unlinked)}")
    report.check("alert-panels.json: panels, thresholds, alert names",
                 check_alert_map(dashboards, amap, in_rules))
    report.check("logql-rules dashboard_url links point at panels", check_rule_links(dashboards, files))
    for case in SEMANTIC:
        report.check(f"values: {case['name']}", check_semantic(dashboards, case))
    report.check("provisioning files", check_provisioning())
    errs, notes = check_sources_name_metrics(known)
    for n in notes:
        print(f"note {n}")
    report.check("gateway / log-shipper sources name the dashboard metrics", errs)

    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

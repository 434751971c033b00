#!/usr/bin/env python3
"""Generate the Grafana dashboards, their provisioning files and the Kubernetes ConfigMaps.

One source for everything under dashboards/ that Grafana reads, so that panel ids, grid
layout, datasource variables and thresholds stay consistent:

    dashboards/llm-gateway.json, vllm.json, triton.json   dashboards (file name = uid)
    dashboards/alert-panels.json                          alert name -> dashboard uid + panel id
    dashboards/provisioning/datasources/datasources.yaml  Prometheus, Loki, Alertmanager
    dashboards/provisioning/dashboards/dashboards.yaml    file provider
    deploy/k8s/base/dashboards/*.yaml                     ConfigMaps for the Grafana sidecar

Usage:
    python3 dashboards/generate.py          # write the files
    python3 dashboards/generate.py --check  # exit 1 if a committed file differs (drift)

Python 3.11 standard library only.

Conventions (see dashboards/README.md): datasources only through the variables
`${prometheus}` / `${loki}`; Prometheus rates over `$__rate_interval`, Loki ranges over
`$__auto`; ratios written `num / (den > 0)`; panel ids are explicit and stable (row N00,
its panels N01..N99) because alert annotations link to them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
K8S_DIR = REPO / "deploy" / "k8s" / "base" / "dashboards"

SCHEMA_VERSION = 39  # Grafana 11.0; newer Grafana migrates it forward on load.
GRID_WIDTH = 24
FOLDER = "LLM serving"
COMMON_TAG = "llm-serving"

PROM = {"type": "prometheus", "uid": "${prometheus}"}
LOKI = {"type": "loki", "uid": "${loki}"}
GRAFANA_BUILTIN = {"type": "grafana", "uid": "-- Grafana --"}

# Fixed datasource uids: used only by the provisioning file, never inside a dashboard.
DS_UIDS = {"prometheus": "prometheus", "loki": "loki", "alertmanager": "alertmanager"}

Json = dict[str, Any]


# --------------------------------------------------------------------------------------
# Targets


def prom(expr: str, legend: str = "", instant: bool = False) -> Json:
    t: Json = {"datasource": PROM, "editorMode": "code", "expr": expr}
    t["legendFormat"] = legend or "__auto"
    t["range"] = not instant
    t["instant"] = instant
    if instant:
        t["format"] = "time_series"
    return t


def loki(expr: str, legend: str = "", instant: bool = False, max_lines: int | None = None) -> Json:
    t: Json = {"datasource": LOKI, "editorMode": "code", "expr": expr}
    if legend:
        t["legendFormat"] = legend
    t["queryType"] = "instant" if instant else "range"
    if max_lines is not None:
        t["maxLines"] = max_lines
    return t


def _with_refs(targets: list[Json]) -> list[Json]:
    out = []
    for i, t in enumerate(targets):
        t = dict(t)
        t["refId"] = chr(ord("A") + i)
        out.append(t)
    return out


# --------------------------------------------------------------------------------------
# Panels


def thresholds(steps: list[tuple[str, float]] | None, base: str = "green") -> Json:
    s: list[Json] = [{"color": base, "value": None}]
    for color, value in steps or []:
        s.append({"color": color, "value": value})
    return {"mode": "absolute", "steps": s}


def fixed_color(name: str, color: str) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "color", "value": {"fixedColor": color, "mode": "fixed"}}],
    }


def _ds_of(targets: list[Json]) -> Json:
    return targets[0]["datasource"]


def timeseries(
    title: str,
    targets: list[Json],
    unit: str = "short",
    desc: str = "",
    steps: list[tuple[str, float]] | None = None,
    stack: bool = False,
    min_: float | None = 0,
    max_: float | None = None,
    overrides: list[Json] | None = None,
    fill: int = 10,
    draw: str = "line",
    base: str = "green",
) -> Json:
    custom: Json = {
        "axisBorderShow": False,
        "axisCenteredZero": False,
        "axisColorMode": "text",
        "axisLabel": "",
        "axisPlacement": "auto",
        "barAlignment": 0,
        "drawStyle": draw,
        "fillOpacity": fill,
        "gradientMode": "none",
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "insertNulls": False,
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "pointSize": 4,
        "scaleDistribution": {"type": "linear"},
        "showPoints": "always" if draw == "points" else "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        # A dashed line at each alert threshold; panels without alert thresholds show none.
        "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    defaults: Json = {
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "mappings": [],
        "thresholds": thresholds(steps, base),
        "unit": unit,
    }
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": _ds_of(targets),
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {
                "calcs": ["mean", "max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _with_refs(targets),
    }


def stat(
    title: str,
    targets: list[Json],
    unit: str = "short",
    desc: str = "",
    steps: list[tuple[str, float]] | None = None,
    base: str = "green",
    decimals: int | None = None,
    graph: bool = True,
) -> Json:
    defaults: Json = {
        "color": {"mode": "thresholds"},
        "mappings": [],
        "thresholds": thresholds(steps, base),
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": _ds_of(targets),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "colorMode": "background" if steps else "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False,
            "textMode": "auto",
            "wideLayout": True,
        },
        "targets": _with_refs(targets),
    }


def gauge(
    title: str,
    targets: list[Json],
    unit: str = "short",
    desc: str = "",
    steps: list[tuple[str, float]] | None = None,
    min_: float = 0,
    max_: float | None = None,
) -> Json:
    defaults: Json = {
        "color": {"mode": "thresholds"},
        "mappings": [],
        "min": min_,
        "thresholds": thresholds(steps),
        "unit": unit,
    }
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "gauge",
        "title": title,
        "description": desc,
        "datasource": _ds_of(targets),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "minVizHeight": 75,
            "minVizWidth": 75,
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
            "sizing": "auto",
        },
        "targets": _with_refs(targets),
    }


def bargauge(
    title: str,
    targets: list[Json],
    unit: str = "short",
    desc: str = "",
    steps: list[tuple[str, float]] | None = None,
    base: str = "blue",
) -> Json:
    return {
        "type": "bargauge",
        "title": title,
        "description": desc,
        "datasource": _ds_of(targets),
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": [],
                "min": 0,
                "thresholds": thresholds(steps, base),
                "unit": unit,
            },
            "overrides": [],
        },
        "options": {
            "displayMode": "gradient",
            "maxVizHeight": 300,
            "minVizHeight": 16,
            "minVizWidth": 8,
            "namePlacement": "auto",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "sizing": "auto",
            "valueMode": "color",
        },
        "targets": _with_refs(targets),
    }


def logs(title: str, targets: list[Json], desc: str = "") -> Json:
    return {
        "type": "logs",
        "title": title,
        "description": desc,
        "datasource": _ds_of(targets),
        "options": {
            "dedupStrategy": "none",
            "enableLogDetails": True,
            "prettifyLogMessage": False,
            "showCommonLabels": False,
            "showLabels": False,
            "showTime": True,
            "sortOrder": "Descending",
            "wrapLogMessage": True,
        },
        "targets": _with_refs(targets),
    }


def quantiles(hist: str, sel: str, by: str = "") -> list[Json]:
    """p50/p95/p99 of a histogram; series named p50/p95/p99 for the fixed colours."""
    grp = f"le, {by}" if by else "le"
    out = []
    for q in ("0.50", "0.95", "0.99"):
        name = "p" + q[2:]
        legend = f"{{{{{by}}}}} {name}" if by else name
        out.append(
            prom(
                f"histogram_quantile({q}, sum by ({grp}) "
                f"(rate({hist}_bucket{{{sel}}}[$__rate_interval])))",
                legend,
            )
        )
    return out


PCT_COLORS = [fixed_color("p50", "green"), fixed_color("p95", "orange"), fixed_color("p99", "red")]


# --------------------------------------------------------------------------------------
# Dashboard builder


class Board:
    """Collects panels and lays them out left to right, top to bottom, without overlap."""

    def __init__(self, uid: str, title: str, description: str, tags: list[str]):
        self.uid = uid
        self.title = title
        self.description = description
        self.tags = tags
        self.panels: list[Json] = []
        self.variables: list[Json] = []
        self.alerts: dict[str, Json] = {}
        self._y = 0
        self._x = 0
        self._line_h = 0

    def _newline(self) -> None:
        self._y += self._line_h
        self._x = 0
        self._line_h = 0

    def _check_id(self, pid: int) -> None:
        if any(p["id"] == pid for p in self.panels):
            raise ValueError(f"{self.uid}: duplicate panel id {pid}")

    def row(self, pid: int, title: str) -> None:
        self._check_id(pid)
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": pid,
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def add(
        self,
        pid: int,
        panel: Json,
        w: int,
        h: int,
        alerts: list[tuple[str, float | None]] | None = None,
    ) -> None:
        """Place a panel; `alerts` = [(alert name, threshold)] that link to this panel."""
        self._check_id(pid)
        if self._x + w > GRID_WIDTH:
            self._newline()
        panel = {"id": pid, **panel, "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y}}
        self._x += w
        self._line_h = max(self._line_h, h)
        for name, value in alerts or []:
            steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
            # None: the alert has no fixed level to draw (`> 0`, a relative regression).
            if value is not None and value not in steps:
                raise ValueError(f"{self.uid}/{pid}: alert {name} threshold {value} not in {steps}")
            if name in self.alerts:
                raise ValueError(f"alert {name} linked twice")
            self.alerts[name] = {
                "dashboard_uid": self.uid,
                "panel_id": pid,
                "panel_title": panel["title"],
                "threshold": value,
                "url": f"/d/{self.uid}?viewPanel={pid}",
            }
        if alerts:
            # Panel → alert: Grafana's alert list (it also shows datasource-managed rules).
            panel["links"] = [
                {"title": f"Alert rule {n}", "url": f"/alerting/list?search={n}"}
                for n, _ in alerts
            ]
            names = ", ".join(f"{n} (threshold {v:g})" if v is not None else n for n, v in alerts)
            sep = " " if panel.get("description") else ""
            panel["description"] = f"{panel.get('description', '')}{sep}Alerts linked here: {names}."
        self.panels.append(panel)

    def var(self, v: Json) -> None:
        self.variables.append(v)

    def render(self) -> Json:
        annotations: list[Json] = [
            {
                "builtIn": 1,
                "datasource": GRAFANA_BUILTIN,
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            }
        ]
        if self.alerts:
            names = "|".join(sorted(self.alerts))
            annotations.append(
                {
                    "datasource": PROM,
                    "enable": True,
                    "expr": f'ALERTS{{alertstate="firing", alertname=~"{names}"}}',
                    "iconColor": "red",
                    "name": "Firing alerts",
                    "step": "1m",
                    "tagKeys": "severity",
                    "titleFormat": "{{alertname}}",
                }
            )
        return {
            "annotations": {"list": annotations},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "id": None,
            "links": [
                {
                    "asDropdown": True,
                    "icon": "external link",
                    "includeVars": False,
                    "keepTime": True,
                    "tags": [COMMON_TAG],
                    "targetBlank": False,
                    "title": "LLM serving",
                    "type": "dashboards",
                }
            ],
            "panels": self.panels,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "tags": [COMMON_TAG, *self.tags],
            "templating": {"list": self.variables},
            "time": {"from": "now-3h", "to": "now"},
            "timepicker": {},
            "timezone": "",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
            "weekStart": "",
        }


# --------------------------------------------------------------------------------------
# Variables


def ds_var(name: str, kind: str, label: str) -> Json:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": label,
        "multi": False,
        "name": name,
        "options": [],
        "query": kind,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_var(
    name: str, label: str, query: str, ds: Json = PROM, all_value: str | None = ".*"
) -> Json:
    """Multi-value query variable (used as `=~"$name"`); All = `.*` unless all_value=None,
    then All is the list of values the query returned."""
    return {
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": ds,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


# --------------------------------------------------------------------------------------
# Alert thresholds (seed 000 and the rules in logql-rules/): one place, used by panels.

T_VLLM_E2E_P95 = 8.0  # VllmP95LatencyHigh, critical
T_VLLM_E2E_P95_SUSTAINED = 10.0  # VllmRequestLatencySustainedHigh, warning
T_VLLM_TTFT_P95 = 2.0  # VllmP95TtftHigh, warning
T_VLLM_TTFT_P95_CRIT = 5.0  # VllmP95TtftCritical
T_VLLM_ERR_WARN = 0.05  # VllmErrorRateHigh: finished_reason="error" share
T_VLLM_ERR_CRIT = 0.10  # VllmErrorRateCritical
T_VLLM_ACTIVE_WARN = 10.0  # VllmActiveRequestsHigh: running requests per model
T_VLLM_ACTIVE_CRIT = 20.0  # VllmActiveRequestsCritical
T_VLLM_QUEUE = 5.0  # VllmQueueBuilding: waiting requests per model
T_VLLM_PREEMPT = 0.05  # VllmPreemptionsHigh: preemptions / s per model
T_VLLM_TPUT_LOW = 10.0  # VllmThroughputLow: generated tokens / s while busy
T_VLLM_TPUT_CRIT = 5.0  # VllmThroughputCritical
T_TRITON_PENDING = 5.0  # TritonPendingRequestsHigh
T_CONTAINER_CPU = 0.8  # ContainerCpuHigh: usage / limit
T_CONTAINER_MEM_WARN = 0.85  # ContainerMemoryNearLimit: working set / limit
T_CONTAINER_MEM_CRIT = 0.9  # ContainerMemoryAtLimit
T_NODE_CPU = 0.8  # NodeCpuHigh
T_NODE_MEM = 0.85  # NodeMemoryHigh
T_KV_CACHE = 0.9  # VllmKvCacheSaturated, warning
T_REFUSAL = 0.2  # GatewayRefusalRateHigh (metrics) and the LogQL refusal alert
T_TRITON_QUEUE = 1.0  # TritonQueueSaturation: avg queue wait (s), warning
T_GPU_UTIL = 90.0  # GpuUtilizationHigh: DCGM percent
T_GPU_MEM_WARN = 0.85  # GpuMemoryHigh
T_GPU_MEM_CRIT = 0.95  # GpuMemoryCritical
T_GPU_TEMP = 85.0  # GpuTemperatureHigh: degrees Celsius
T_VLLM_QUEUE_P95 = 2.0  # VllmP95QueueTimeHigh: seconds
T_VLLM_ITL_P95 = 0.2  # VllmP95InterTokenLatencyHigh: seconds
T_VLLM_TRUNCATED = 0.2  # VllmTruncationRateHigh: finished_reason="length" share
T_VLLM_DEFERRED = 5.0  # VllmRequestsDeferredHigh: deferred waiting requests per model
T_VLLM_HTTP_5XX = 0.05  # VllmHttp5xxRateHigh: 5xx share of a server's generation requests
T_GW_UPSTREAM_ERRORS = 0.05  # GatewayUpstreamErrorsHigh: failures / s per pool and kind
T_GW_ERR_WARN = 0.05  # GatewayErrorRateHigh: (5xx + mid-stream errors) share
T_GW_ERR_CRIT = 0.10  # GatewayErrorRateCritical
T_GW_P95 = 8.0  # GatewayP95LatencyHigh (completions)
T_GW_TTFT_P95 = 2.0  # GatewayP95TtftHigh
T_BUDGET_WARN = 0.9  # GatewayTenantBudgetWarning: spend over 24 h / daily budget
T_BUDGET_CRIT = 1.0  # GatewayTenantBudgetExceeded
T_SHIPPER_LAG = 60.0  # LogShipperLagGrowing: seconds (and growing)
T_SHIPPER_FAILING = 0.5  # LogShipperPushFailing: failed batch share

# The LogQL refusal alert(s) in logql-rules/loki/ shown by the Loki refusal panel.
LOKI_REFUSAL_ALERTS: list[tuple[str, float | None]] = [("GatewayEventsRefusalRateHigh", T_REFUSAL)]
T_EV_ERRORS = 0.05  # GatewayEventsErrorRateHigh: level=error share of events
T_EV_P95_MS = 8000.0  # GatewayEventsP95LatencyHigh: p95 latency_ms of completions
T_EV_DISCONNECTS = 0.1  # GatewayEventsClientDisconnectsHigh

RI = "$__rate_interval"


def rate(metric: str, sel: str, by: str = "") -> str:
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({metric}{{{sel}}}[{RI}]))"


# --------------------------------------------------------------------------------------
# llm-gateway


def gateway() -> Board:
    b = Board(
        "llm-gateway",
        "LLM Gateway",
        "Application view of the LLM gateway: traffic, latency, tokens, spend and refusals from "
        "its Prometheus metrics, beside the same signals computed from its JSON events in Loki, "
        "and the health of the log-shipper that carries those events.",
        ["llm-gateway"],
    )
    b.var(ds_var("prometheus", "prometheus", "Prometheus"))
    b.var(ds_var("loki", "loki", "Loki"))
    b.var(query_var("model", "Model", "label_values(llm_gateway_requests_total, model)"))
    b.var(
        query_var(
            "tenant", "Tenant", 'label_values(llm_gateway_requests_total{model=~"$model"}, tenant)'
        )
    )
    # Scrape jobs, for the targets-down tiles; All = the jobs found (no catch-all regex).
    b.var(query_var("job", "Gateway job", "label_values(llm_gateway_build_info, job)", all_value=None))
    b.var(
        query_var(
            "shipper_job", "Shipper job", "label_values(log_shipper_build_info, job)", all_value=None
        )
    )

    mt = 'model=~"$model", tenant=~"$tenant"'
    m = 'model=~"$model"'
    # The latency alert looks at generation routes only (embeddings, tokenize and /v1/models are quick).
    mr = 'model=~"$model", route=~"/v1/chat/completions|/v1/completions|/v1/responses|/v1/messages"'

    def req(by: str = "", extra: str = "") -> str:
        return rate("llm_gateway_requests_total", mt + (", " + extra if extra else ""), by)

    def errors(by: str = "") -> str:
        # Failed = 5xx sent to the client, or an error event in the middle of a stream.
        agg = f"sum by ({by}) " if by else "sum"
        return (
            f'{agg}(rate(llm_gateway_requests_total{{{mt}, status=~"5.."}}[{RI}]) '
            f'or rate(llm_gateway_requests_total{{{mt}, finish_reason="error"}}[{RI}]))'
        )

    # Full refusals only: kind="partial" counts hedges (the event's refusal is false).
    mtf = mt + ', kind="full"'
    mtp = mt + ', kind="partial"'

    def refusal_ratio(by: str = "") -> str:
        return f"{rate('llm_gateway_refusals_total', mtf, by)} / ({req(by)} > 0)"

    def sel(extra: str = "") -> str:
        more = f", {extra}" if extra else ""
        return f'{{app="llm-gateway", event="response"{more}, model=~"$model", tenant=~"$tenant"}}'

    events = sel()
    # `| json a="a"` extracts only the field a query needs (as the Loki rules do).
    refusals = f'{events} | json refusal="refusal" | refusal="true"'

    def loki_ratio(num: str, by: str) -> str:
        """(num or 0 per group) / (all events > 0), per group."""
        den = f"sum by ({by}) (count_over_time({events} [$__auto]))"
        return f"(sum by ({by}) (count_over_time({num} [$__auto])) or {den} * 0) / ({den} > 0)"

    b.row(100, "Overview")
    b.add(101, stat("Requests / s", [prom(req())], "reqps", "All /v1 requests."), 3, 4)
    b.add(
        102,
        stat(
            "Error ratio",
            [prom(f"({errors()} or vector(0)) / ({req()} > 0)")],
            "percentunit",
            "5xx responses and streams that ended with an error event, over all requests.",
            [("orange", T_GW_ERR_WARN), ("red", T_GW_ERR_CRIT)],
            decimals=2,
        ),
        3,
        4,
    )
    b.add(
        103,
        stat(
            "Latency p95",
            quantiles("llm_gateway_request_duration_seconds", mr)[1:2],
            "s",
            "Completions, request start to last byte.",
            [("orange", T_GW_P95)],
        ),
        3,
        4,
    )
    b.add(
        104,
        stat(
            "TTFT p95",
            quantiles("llm_gateway_time_to_first_token_seconds", m)[1:2],
            "s",
            "Time to the first content chunk of streamed responses.",
            [("orange", T_GW_TTFT_P95)],
        ),
        3,
        4,
    )
    b.add(
        105,
        stat(
            "Refusal rate",
            [prom(refusal_ratio())],
            "percentunit",
            "Refusals / responses from the gateway's counters.",
            [("orange", T_REFUSAL)],
            decimals=1,
        ),
        3,
        4,
    )
    b.add(
        106,
        stat(
            "Spend (range)",
            [prom(f"sum(increase(llm_gateway_cost_usd_total{{{mt}}}[$__range]))", instant=True)],
            "currencyUSD",
            "Cost over the selected time range from the price table.",
            graph=False,
            decimals=2,
        ),
        3,
        4,
    )
    b.add(
        107,
        stat(
            "Upstream pools down",
            [prom("count(max by (upstream) (llm_gateway_upstream_up) == 0) or vector(0)")],
            "short",
            "Upstream pools with no healthy endpoint.",
            [("red", 1)],
            graph=False,
        ),
        3,
        4,
        alerts=[("GatewayUpstreamDown", None)],
    )
    b.add(
        108,
        stat(
            "Gateway targets down",
            [prom('count(up{job=~"$job"} == 0) or vector(0)')],
            "short",
            "Gateway scrape targets that do not answer.",
            [("red", 1)],
            graph=False,
        ),
        3,
        4,
        alerts=[("GatewayDown", None)],
    )

    b.row(200, "Traffic")
    b.add(
        201,
        timeseries("Requests by model", [prom(req("model"), "{{model}}")], "reqps", stack=True),
        12,
        8,
    )
    b.add(
        202,
        timeseries(
            "Requests by status",
            [prom(req("status"), "{{status}}")],
            "reqps",
            "HTTP status sent to the client (499 = the client went away first).",
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        203,
        timeseries(
            "Finish reasons",
            [prom(req("finish_reason"), "{{finish_reason}}")],
            "reqps",
            "finish_reason of the response; `none` when there was none (errors, embeddings).",
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        204,
        timeseries(
            "Error ratio by model",
            [prom(f"({errors('model')} or {req('model')} * 0) / ({req('model')} > 0)", "{{model}}")],
            "percentunit",
            "5xx responses and streams that ended with an error event, over all requests.",
            [("orange", T_GW_ERR_WARN), ("red", T_GW_ERR_CRIT)],
        ),
        12,
        8,
        alerts=[("GatewayErrorRateHigh", T_GW_ERR_WARN), ("GatewayErrorRateCritical", T_GW_ERR_CRIT)],
    )

    b.row(300, "Latency")
    b.add(
        301,
        timeseries(
            "Request latency p50 / p95 / p99 (completions)",
            quantiles("llm_gateway_request_duration_seconds", mr),
            "s",
            "Request start to last byte as clients see it, chat and text completions. Buckets "
            "are vLLM's, so this compares with the vLLM dashboard's end-to-end latency.",
            [("orange", T_GW_P95)],
            overrides=PCT_COLORS,
        ),
        12,
        8,
        alerts=[("GatewayP95LatencyHigh", T_GW_P95)],
    )
    b.add(
        302,
        timeseries(
            "Time to first token p50 / p95 / p99",
            quantiles("llm_gateway_time_to_first_token_seconds", m),
            "s",
            "Request start to the first chunk carrying content (streams only).",
            [("orange", T_GW_TTFT_P95)],
            overrides=PCT_COLORS,
        ),
        12,
        8,
        alerts=[("GatewayP95TtftHigh", T_GW_TTFT_P95)],
    )

    b.row(400, "Tokens and spend")
    b.add(
        401,
        timeseries(
            "Tokens / s by model",
            [prom(rate("llm_gateway_tokens_total", mt, "model, kind"), "{{model}} {{kind}}")],
            "short",
            "Prompt and completion tokens per second from upstream usage.",
        ),
        12,
        8,
    )
    b.add(
        402,
        timeseries(
            "Spend by tenant (USD / hour)",
            [prom(f"{rate('llm_gateway_cost_usd_total', mt, 'tenant')} * 3600", "{{tenant}}")],
            "currencyUSD",
            "Spend rate from the price table, scaled to one hour.",
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        403,
        bargauge(
            "Spend by tenant (range)",
            [
                prom(
                    f"sort_desc(sum by (tenant) (increase(llm_gateway_cost_usd_total{{{mt}}}[$__range])))",
                    "{{tenant}}",
                    instant=True,
                )
            ],
            "currencyUSD",
        ),
        8,
        7,
    )
    b.add(
        404,
        bargauge(
            "Daily budget used by tenant",
            [
                prom(
                    'sort_desc(tenant:llm_gateway_budget_used:ratio{tenant=~"$tenant"})',
                    "{{tenant}}",
                    instant=True,
                )
            ],
            "percentunit",
            "Spend over the last 24 hours / the tenant's daily budget (recording rule of "
            "logql-rules/prometheus; budgets are set in budgets.rules.yml).",
            [("orange", T_BUDGET_WARN), ("red", T_BUDGET_CRIT)],
            base="green",
        ),
        8,
        7,
        alerts=[
            ("GatewayTenantBudgetWarning", T_BUDGET_WARN),
            ("GatewayTenantBudgetExceeded", T_BUDGET_CRIT),
        ],
    )
    b.add(
        405,
        bargauge(
            "Tokens by tenant (range)",
            [
                prom(
                    f"sort_desc(sum by (tenant) (increase(llm_gateway_tokens_total{{{mt}}}[$__range])))",
                    "{{tenant}}",
                    instant=True,
                )
            ],
            "short",
        ),
        8,
        7,
    )

    b.row(500, "Refusals: metrics and Loki")
    b.add(
        501,
        timeseries(
            "Refusal rate (metrics)",
            [
                prom(f"({rate('llm_gateway_refusals_total', mtf)} or vector(0)) / ({req()} > 0)", "all"),
                prom(refusal_ratio("model"), "{{model}}"),
            ],
            "percentunit",
            "llm_gateway_refusals_total / llm_gateway_requests_total.",
            [("orange", T_REFUSAL)],
            max_=1,
        ),
        12,
        8,
        alerts=[("GatewayRefusalRateHigh", T_REFUSAL)],
    )
    b.add(
        502,
        timeseries(
            "Refusal rate (Loki events)",
            [
                loki(
                    f"(sum(count_over_time({refusals} [$__auto])) or vector(0)) / "
                    f"(sum(count_over_time({events} [$__auto])) > 0)",
                    "all",
                ),
                loki(
                    f"sum by (model) (count_over_time({refusals} [$__auto])) / "
                    f"(sum by (model) (count_over_time({events} [$__auto])) > 0)",
                    "{{model}}",
                ),
            ],
            "percentunit",
            "Share of response events with refusal=true: the signal of the LogQL refusal "
            "alert (Loki ruler, 5 minute windows). Should match the metrics panel beside it.",
            [("orange", T_REFUSAL)],
            max_=1,
        ),
        12,
        8,
        alerts=LOKI_REFUSAL_ALERTS,
    )
    b.add(
        503,
        bargauge(
            "Top tenants by refusals (range)",
            [
                loki(
                    f"topk(10, sum by (tenant) (count_over_time({refusals} [$__range])))",
                    "{{tenant}}",
                    instant=True,
                )
            ],
            "short",
            "LogQL topk over the selected range.",
        ),
        12,
        8,
    )
    b.add(
        504,
        timeseries(
            "Refusals by reason (Loki events)",
            [
                loki(
                    f"sum by (refusal_reason) (count_over_time({events} "
                    f'| json refusal="refusal", refusal_reason="refusal_reason" | refusal="true" '
                    "[$__auto]))",
                    "{{refusal_reason}}",
                )
            ],
            "short",
            "Rule id that matched, or upstream_refusal.",
            stack=True,
            draw="bars",
            fill=80,
        ),
        12,
        8,
    )

    b.add(
        505,
        timeseries(
            "Partial refusals (hedges) per request",
            [
                prom(
                    f"{rate('llm_gateway_refusals_total', mtp, 'model')} / ({req('model')} > 0)",
                    "{{model}}",
                )
            ],
            "percentunit",
            "kind=partial: a refusal cue with an answer after it; not counted as refusals.",
        ),
        12,
        8,
    )
    b.add(
        506,
        timeseries(
            "Refusal judge: verdicts and agreement with the detector",
            [
                prom(
                    f"sum by (verdict, agreement) (rate(llm_gateway_refusal_judgements_total{{{m}}}[{RI}]))",
                    "{{verdict}} / {{agreement}}",
                )
            ],
            "ops",
            "Only with [refusal.judge] on: sampled responses judged off the request path.",
            stack=True,
        ),
        12,
        8,
        alerts=[("GatewayRefusalJudgeDisagrees", None), ("GatewayRefusalJudgeFailing", None)],
    )

    b.row(900, "Events in Loki")
    b.add(
        901,
        timeseries(
            "Error events by model (Loki)",
            [loki(loki_ratio(sel('level="error"'), "model"), "{{model}}")],
            "percentunit",
            "Share of response events with level error (5xx or upstream failure).",
            [("orange", T_EV_ERRORS)],
        ),
        8,
        8,
        alerts=[("GatewayEventsErrorRateHigh", T_EV_ERRORS)],
    )
    b.add(
        902,
        timeseries(
            "Completion latency p95 from events (Loki)",
            [
                loki(
                    f"quantile_over_time(0.95, {events} "
                    '| json latency_ms="latency_ms", route="route" '
                    '| route=~"/v1/chat/completions|/v1/completions|/v1/responses|/v1/messages" '
                    '| unwrap latency_ms | __error__="" [$__auto]) by (model)',
                    "{{model}}",
                )
            ],
            "ms",
            "latency_ms of chat and text completion events; compare with the metrics p95.",
            [("orange", T_EV_P95_MS)],
        ),
        8,
        8,
        alerts=[("GatewayEventsP95LatencyHigh", T_EV_P95_MS)],
    )
    b.add(
        903,
        timeseries(
            "Client disconnects by model (Loki)",
            [
                loki(
                    loki_ratio(
                        f'{events} | json error_type="error_type" | error_type="client_disconnect"',
                        "model",
                    ),
                    "{{model}}",
                )
            ],
            "percentunit",
            "Share of requests the client abandoned before the response ended.",
            [("orange", T_EV_DISCONNECTS)],
        ),
        8,
        8,
        alerts=[("GatewayEventsClientDisconnectsHigh", T_EV_DISCONNECTS)],
    )
    b.add(
        904,
        timeseries(
            "Refusal rate by tenant (Loki)",
            [loki(loki_ratio(refusals, "tenant"), "{{tenant}}")],
            "percentunit",
            "The tenant spike alert also needs the share to be twice the tenant's last hour.",
            [("orange", T_REFUSAL)],
            max_=1,
        ),
        8,
        8,
        alerts=[("GatewayEventsTenantRefusalSpike", T_REFUSAL)],
    )
    b.add(
        905,
        timeseries(
            "Response events / s by level (Loki)",
            [loki(f"sum by (level) (rate({events} [$__auto]))", "{{level}}")],
            "ops",
            "No line at all for a while means no traffic, or a broken gateway → shipper → Loki path.",
            stack=True,
            overrides=[fixed_color("info", "green"), fixed_color("warn", "orange"),
                       fixed_color("error", "red")],
        ),
        8,
        8,
        alerts=[("GatewayEventsMissing", None)],
    )
    b.add(
        906,
        timeseries(
            "Unparsable lines (Loki)",
            [
                loki(
                    'sum(count_over_time({app="llm-gateway", parse_error="true"} [$__auto]))',
                    "non-JSON lines",
                )
            ],
            "short",
            "Lines of the event stream that are not JSON (shipped with parse_error=\"true\").",
            draw="bars",
            fill=80,
        ),
        8,
        8,
        alerts=[("GatewayEventsUnparsable", None)],
    )

    b.row(600, "Recent refusals and errors")
    b.add(
        601,
        logs(
            "Refusals and errors (events)",
            [loki(f'{events} | json | refusal="true" or level="error"', max_lines=500)],
            "Newest first; open a line for its fields (request_id is structured metadata).",
        ),
        24,
        12,
    )

    b.row(700, "Upstreams")
    b.add(
        701,
        timeseries(
            "Upstream endpoints up",
            [prom("min by (upstream, endpoint) (llm_gateway_upstream_up)", "{{upstream}} {{endpoint}}")],
            "short",
            "1 while the endpoint passes its health check.",
            max_=1,
        ),
        8,
        8,
        alerts=[("GatewayUpstreamEndpointDown", None)],
    )
    b.add(
        702,
        timeseries(
            "Upstream errors by kind",
            [
                prom(
                    f"sum by (upstream, kind) (rate(llm_gateway_upstream_errors_total[{RI}]))",
                    "{{upstream}} {{kind}}",
                )
            ],
            "ops",
            "Requests the gateway could not complete because of the upstream, per pool and kind "
            "(the alert leaves out http_4xx, the client's errors).",
            [("orange", T_GW_UPSTREAM_ERRORS)],
        ),
        8,
        8,
        alerts=[("GatewayUpstreamErrorsHigh", T_GW_UPSTREAM_ERRORS)],
    )
    b.add(
        703,
        timeseries(
            "In flight by model",
            [prom(f"sum by (model) (llm_gateway_in_flight_requests{{{m}}})", "{{model}}")],
            "short",
            stack=True,
        ),
        8,
        8,
    )

    b.add(
        704,
        timeseries(
            "Endpoint picks by routing reason",
            [
                prom(
                    f"sum by (upstream, reason) (rate(llm_gateway_endpoint_picks_total[{RI}]))",
                    "{{upstream}} {{reason}}",
                )
            ],
            "ops",
            "Why each pool chose its endpoints (the event's routing_reason): affinity_fallback "
            "means a prefix-affinity endpoint was at its load bound; retry, a connect error or 502/503.",
            stack=True,
        ),
        8,
        8,
    )
    b.add(
        705,
        timeseries(
            "Endpoint queue (scraped vLLM waiting)",
            [
                prom(
                    "max by (upstream, endpoint) (llm_gateway_endpoint_queue_waiting)",
                    "{{upstream}} {{endpoint}}",
                )
            ],
            "short",
            "vllm:num_requests_waiting of each endpoint as the gateway last scraped it "
            "(pools with a metrics scrape only; gaps while the scrape fails).",
        ),
        8,
        8,
    )
    b.add(
        706,
        timeseries(
            "Endpoint KV-cache usage (scraped)",
            [
                prom(
                    "max by (upstream, endpoint) (llm_gateway_endpoint_kv_cache_usage_ratio)",
                    "{{upstream}} {{endpoint}}",
                )
            ],
            "percentunit",
            "vllm:kv_cache_usage_perc of each endpoint as the gateway last scraped it.",
            max_=1,
        ),
        8,
        8,
    )

    b.row(800, "Log shipper health")
    b.add(
        801,
        stat(
            "Shipping lag",
            [prom("max(log_shipper_lag_seconds)")],
            "s",
            "Age of the oldest line read but not yet accepted by Loki.",
            [("orange", T_SHIPPER_LAG)],
        ),
        4,
        4,
    )
    b.add(
        802,
        stat(
            "Since last accepted push",
            [prom("time() - max(log_shipper_last_success_timestamp_seconds)")],
            "s",
            "Seconds since Loki last accepted a batch.",
        ),
        4,
        4,
    )
    b.add(
        803,
        stat(
            "Failed batches",
            [
                prom(
                    f'(sum(rate(log_shipper_batches_total{{outcome!="success"}}[{RI}])) or vector(0)) '
                    f"/ (sum(rate(log_shipper_batches_total[{RI}])) > 0)"
                )
            ],
            "percentunit",
            "Share of push batches that failed or were rejected.",
            [("red", T_SHIPPER_FAILING)],
        ),
        4,
        4,
    )
    b.add(
        804,
        stat(
            "Entries dropped (range)",
            [prom("sum(increase(log_shipper_dropped_entries_total[$__range])) or vector(0)", instant=True)],
            "short",
            "Entries Loki rejected or lines too long to ship.",
            [("red", 1)],
            graph=False,
        ),
        4,
        4,
        alerts=[("LogShipperDroppingEntries", None)],
    )
    b.add(
        805,
        stat(
            "Events dropped by gateway (range)",
            [prom("sum(increase(llm_gateway_events_dropped_total[$__range])) or vector(0)", instant=True)],
            "short",
            "Event lines the gateway could not write (the event sink was full or failing).",
            [("red", 1)],
            graph=False,
        ),
        4,
        4,
        alerts=[("GatewayEventsDropped", None)],
    )
    b.add(
        806,
        stat(
            "Shipper targets down",
            [prom('count(up{job=~"$shipper_job"} == 0) or vector(0)')],
            "short",
            "log-shipper scrape targets that do not answer.",
            [("red", 1)],
            graph=False,
        ),
        4,
        4,
        alerts=[("LogShipperDown", None)],
    )
    b.add(
        807,
        timeseries(
            "Failed batch ratio",
            [
                prom(
                    f'sum by (instance) (rate(log_shipper_batches_total{{outcome!="success"}}[{RI}])) '
                    f"/ (sum by (instance) (rate(log_shipper_batches_total[{RI}])) > 0)",
                    "{{instance}}",
                )
            ],
            "percentunit",
            "Batches that failed (retryable) or were rejected, over all batches.",
            [("red", T_SHIPPER_FAILING)],
            max_=1,
        ),
        8,
        8,
        alerts=[("LogShipperPushFailing", T_SHIPPER_FAILING)],
    )
    b.add(
        808,
        timeseries(
            "Push batches by outcome",
            [
                prom(
                    f"sum by (outcome) (rate(log_shipper_batches_total[{RI}]))",
                    "{{outcome}}",
                ),
                prom(f"sum(rate(log_shipper_retries_total[{RI}]))", "retries"),
            ],
            "ops",
            overrides=[fixed_color("success", "green"), fixed_color("rejected", "red"),
                       fixed_color("retryable_error", "orange")],
        ),
        8,
        8,
    )
    b.add(
        809,
        timeseries(
            "Lag and pending bytes",
            [
                prom("max by (instance) (log_shipper_lag_seconds)", "lag {{instance}}"),
                prom("sum(log_shipper_pending_bytes)", "pending bytes"),
            ],
            "s",
            "The lag alert fires when the lag is above the line and still growing.",
            [("orange", T_SHIPPER_LAG)],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "pending bytes"},
                    "properties": [
                        {"id": "unit", "value": "bytes"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
        8,
        8,
        alerts=[("LogShipperLagGrowing", T_SHIPPER_LAG)],
    )
    b.add(
        810,
        timeseries(
            "Events written, lines read, entries sent",
            [
                prom(f"sum(rate(llm_gateway_events_written_total[{RI}]))", "gateway events written"),
                prom(f"sum(rate(log_shipper_lines_read_total[{RI}]))", "shipper lines read"),
                prom(f"sum(rate(log_shipper_entries_sent_total[{RI}]))", "entries accepted by Loki"),
            ],
            "ops",
            "The three lines overlap when the pipeline keeps up.",
        ),
        8,
        8,
    )
    b.add(
        811,
        timeseries(
            "Dropped and truncated",
            [
                prom(
                    f"sum by (reason) (rate(log_shipper_dropped_entries_total[{RI}]))",
                    "dropped {{reason}}",
                ),
                prom(f"sum(rate(log_shipper_truncated_lines_total[{RI}]))", "truncated"),
                prom(f"sum(rate(llm_gateway_events_dropped_total[{RI}]))", "gateway events dropped"),
                prom(
                    f"sum(rate(log_shipper_entries_rejected_count_unknown_total[{RI}]))",
                    "fate unknown (Loki 400 without a count)",
                ),
            ],
            "ops",
        ),
        8,
        8,
    )
    b.add(
        812,
        timeseries(
            "Bytes shipped",
            [prom(f"sum(rate(log_shipper_bytes_sent_total[{RI}]))", "bytes accepted by Loki")],
            "Bps",
            "Uncompressed line bytes Loki accepted.",
        ),
        8,
        8,
    )
    b.add(
        813,
        timeseries(
            "Input files",
            [
                prom("sum(log_shipper_followed_files)", "followed"),
                prom("sum(log_shipper_open_files)", "open"),
                prom(f"sum(rate(log_shipper_discovery_errors_total[{RI}]))", "failed listings/s"),
            ],
            "short",
            "Followed above open: files are parked (more than --max-open-files). "
            "Failed listings: new and rotated files are not picked up.",
        ),
        8,
        8,
        alerts=[("LogShipperDiscoveryFailing", None)],
    )
    b.add(
        814,
        timeseries(
            "Unread input lost",
            [prom(f"sum(rate(log_shipper_unread_bytes_lost_total[{RI}]))", "bytes lost")],
            "Bps",
            "Parked files deleted before they were read (raise --max-open-files).",
        ),
        8,
        8,
        alerts=[("LogShipperUnreadBytesLost", None)],
    )
    return b


# --------------------------------------------------------------------------------------
# vLLM


def dcgm_gpu_panels(b: Board, base_id: int, w: int = 8) -> None:
    g = 'UUID=~"$gpu"'
    host = "{{Hostname}}{{hostname}} GPU {{gpu}}"
    fb = lambda f: f"DCGM_FI_DEV_FB_{f}{{{g}}}"  # noqa: E731
    b.add(
        base_id,
        timeseries(
            "GPU utilisation (DCGM)",
            [prom(f"DCGM_FI_DEV_GPU_UTIL{{{g}}}", host)],
            "percent",
            "DCGM_FI_DEV_GPU_UTIL per GPU.",
            [("red", T_GPU_UTIL)],
            max_=100,
        ),
        w,
        8,
        alerts=[("GpuUtilizationHigh", T_GPU_UTIL)],
    )
    b.add(
        base_id + 1,
        timeseries(
            "GPU memory used (DCGM)",
            [
                prom(
                    f"{fb('USED')} / (({fb('USED')} + {fb('FREE')} "
                    f"+ ({fb('RESERVED')} or {fb('USED')} * 0)) > 0)",
                    host,
                )
            ],
            "percentunit",
            "Frame buffer used / (used + free + reserved) per GPU; reserved counts as 0 on "
            "exporters without it.",
            [("orange", T_GPU_MEM_WARN), ("red", T_GPU_MEM_CRIT)],
            max_=1,
        ),
        w,
        8,
        alerts=[("GpuMemoryHigh", T_GPU_MEM_WARN), ("GpuMemoryCritical", T_GPU_MEM_CRIT)],
    )
    b.add(
        base_id + 2,
        timeseries(
            "GPU memory used vs free (DCGM)",
            [prom(f"sum({fb('USED')})", "used"), prom(f"sum({fb('FREE')})", "free")],
            "mbytes",
            "Frame buffer MiB over the selected GPUs.",
            stack=True,
            overrides=[fixed_color("used", "orange"), fixed_color("free", "green")],
        ),
        w,
        8,
    )
    b.add(
        base_id + 3,
        timeseries(
            "GPU power (DCGM)",
            [prom(f"DCGM_FI_DEV_POWER_USAGE{{{g}}}", host)],
            "watt",
            "DCGM_FI_DEV_POWER_USAGE per GPU.",
        ),
        w,
        8,
    )
    b.add(
        base_id + 4,
        timeseries(
            "GPU temperature (DCGM)",
            [prom(f"DCGM_FI_DEV_GPU_TEMP{{{g}}}", host)],
            "celsius",
            "DCGM_FI_DEV_GPU_TEMP per GPU; clocks drop near the GPU's slowdown temperature.",
            [("orange", T_GPU_TEMP)],
            min_=None,
        ),
        w,
        8,
        alerts=[("GpuTemperatureHigh", T_GPU_TEMP)],
    )
    b.add(
        base_id + 5,
        timeseries(
            "XID errors (DCGM)",
            [
                prom(f"DCGM_EXP_XID_ERRORS_COUNT{{{g}}}", f"{host} XID {{{{xid}}}}"),
                prom(f"changes(DCGM_FI_DEV_XID_ERRORS{{{g}}}[{RI}]) > 0", f"{host} last XID changed"),
            ],
            "none",
            "XIDs per GPU and code within dcgm-exporter's window (DCGM_EXP_XID_ERRORS_COUNT, opt-in "
            "in its counters CSV; repeats count). Without it: a point when the last-XID gauge "
            "DCGM_FI_DEV_XID_ERRORS changed. That gauge holds the last XID ever seen until the "
            "exporter restarts, so its value is not 'now' (and a repeat of the same code does not "
            "change it). 48, 74, 79, 94, 95 need a reset or drain.",
            [("red", 1)],
            draw="points",
        ),
        w,
        8,
        alerts=[("GpuXidErrors", None), ("GpuXidErrorsFatal", None)],
    )
    b.add(
        base_id + 6,
        timeseries(
            "Row-remap failures and PCIe replays (DCGM)",
            [
                prom(f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{g}}} > 0", f"{host} row remap failed"),
                prom(f"increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{g}}}[{RI}]) > 0", f"{host} PCIe replays"),
            ],
            "none",
            "A row-remap failure (DCGM_FI_DEV_ROW_REMAP_FAILURE) means the GPU has no spare memory "
            "rows left: replace it. PCIe replays (DCGM_FI_DEV_PCIE_REPLAY_COUNTER) per interval; "
            "the alert counts more than 10 in 10 minutes.",
            draw="points",
        ),
        w,
        8,
        alerts=[("GpuRowRemapFailure", None), ("GpuPcieReplaysHigh", None)],
    )


def vllm() -> Board:
    b = Board(
        "vllm",
        "vLLM",
        "vLLM engine metrics (vllm:*, V1 engine) with DCGM GPU metrics and the Kubernetes "
        "pods and nodes that serve them: overview, latency, request details, KV cache and GPU, "
        "throughput.",
        ["vllm"],
    )
    b.var(ds_var("prometheus", "prometheus", "Prometheus"))
    # No allValue: All expands to the jobs that export vLLM series, which also scopes `up`.
    b.var(query_var("job", "Job", "label_values(vllm:num_requests_running, job)", all_value=None))
    b.var(
        query_var(
            "model_name",
            "Model",
            'label_values(vllm:num_requests_running{job=~"$job"}, model_name)',
        )
    )
    b.var(
        query_var(
            "instance",
            "Instance",
            'label_values(vllm:num_requests_running{job=~"$job", model_name=~"$model_name"}, instance)',
        )
    )
    b.var(query_var("gpu", "GPU (DCGM UUID)", "label_values(DCGM_FI_DEV_GPU_UTIL, UUID)"))
    b.var(query_var("namespace", "Namespace", "label_values(kube_pod_info, namespace)"))
    q = 'job=~"$job", model_name=~"$model_name", instance=~"$instance"'
    ns = 'namespace=~"$namespace"'

    b.row(100, "Overview")
    b.add(
        101,
        gauge(
            "Concurrent requests",
            [prom(f"sum(vllm:num_requests_running{{{q}}})")],
            "short",
            "Requests in model execution batches.",
            [("orange", T_VLLM_ACTIVE_WARN), ("red", T_VLLM_ACTIVE_CRIT)],
            max_=2 * T_VLLM_ACTIVE_CRIT,
        ),
        4,
        6,
        alerts=[
            ("VllmActiveRequestsHigh", T_VLLM_ACTIVE_WARN),
            ("VllmActiveRequestsCritical", T_VLLM_ACTIVE_CRIT),
        ],
    )
    b.add(
        102,
        gauge(
            "Queue length",
            [prom(f"sum(vllm:num_requests_waiting{{{q}}})")],
            "short",
            "Requests waiting to be scheduled.",
            [("orange", T_VLLM_QUEUE)],
            max_=4 * T_VLLM_QUEUE,
        ),
        4,
        6,
        alerts=[("VllmQueueBuilding", T_VLLM_QUEUE)],
    )
    b.add(
        103,
        gauge(
            "KV cache usage",
            [prom(f"max(vllm:kv_cache_usage_perc{{{q}}})")],
            "percentunit",
            "Highest KV cache usage across the selected engines.",
            [("orange", T_KV_CACHE)],
            max_=1,
        ),
        4,
        6,
    )
    b.add(
        104,
        stat("Requests / s", [prom(rate("vllm:request_success_total", q))], "reqps",
             "Finished requests per second, all finish reasons."),
        3,
        6,
    )
    b.add(
        105,
        stat(
            "E2E latency p95",
            quantiles("vllm:e2e_request_latency_seconds", q)[1:2],
            "s",
            steps=[("red", T_VLLM_E2E_P95)],
        ),
        3,
        6,
    )
    b.add(
        106,
        stat(
            "TTFT p95",
            quantiles("vllm:time_to_first_token_seconds", q)[1:2],
            "s",
            steps=[("orange", T_VLLM_TTFT_P95), ("red", T_VLLM_TTFT_P95_CRIT)],
        ),
        3,
        6,
    )
    b.add(
        107,
        stat(
            "Targets down",
            [prom('count(up{job=~"$job"} == 0) or vector(0)')],
            "short",
            "Scrape targets of the vLLM jobs that do not answer.",
            [("red", 1)],
            graph=False,
        ),
        3,
        6,
        alerts=[("VllmServiceDown", None), ("VllmModelNotServing", None)],
    )

    b.row(200, "Latency")
    b.add(
        201,
        timeseries(
            "E2E request latency p50 / p95 / p99",
            quantiles("vllm:e2e_request_latency_seconds", q),
            "s",
            "Arrival to last token (vllm:e2e_request_latency_seconds).",
            [("red", T_VLLM_E2E_P95), ("dark-red", T_VLLM_E2E_P95_SUSTAINED)],
            overrides=PCT_COLORS,
        ),
        12,
        8,
        alerts=[
            ("VllmP95LatencyHigh", T_VLLM_E2E_P95),
            ("VllmRequestLatencySustainedHigh", T_VLLM_E2E_P95_SUSTAINED),
            ("VllmLatencyRegression", None),
        ],
    )
    b.add(
        202,
        timeseries(
            "Time to first token p50 / p95 / p99",
            quantiles("vllm:time_to_first_token_seconds", q),
            "s",
            "Arrival to first token (vllm:time_to_first_token_seconds).",
            [("orange", T_VLLM_TTFT_P95), ("red", T_VLLM_TTFT_P95_CRIT)],
            overrides=PCT_COLORS,
        ),
        12,
        8,
        alerts=[
            ("VllmP95TtftHigh", T_VLLM_TTFT_P95),
            ("VllmP95TtftCritical", T_VLLM_TTFT_P95_CRIT),
        ],
    )
    b.add(
        203,
        timeseries(
            "Inter-token latency p50 / p95 / p99",
            quantiles("vllm:inter_token_latency_seconds", q),
            "s",
            "Time between successive output tokens (vllm:inter_token_latency_seconds; vLLM before "
            "0.11 calls it vllm:time_per_output_token_seconds, which the alert also reads).",
            [("orange", T_VLLM_ITL_P95)],
            overrides=PCT_COLORS,
        ),
        12,
        8,
        alerts=[("VllmP95InterTokenLatencyHigh", T_VLLM_ITL_P95)],
    )
    phases = []
    for phase in ("queue", "prefill", "decode"):
        h = f"vllm:request_{phase}_time_seconds"
        phases.append(
            prom(
                f"sum(rate({h}_sum{{{q}}}[{RI}])) / (sum(rate({h}_count{{{q}}}[{RI}])) > 0)",
                phase,
            )
        )
    b.add(
        204,
        timeseries(
            "Mean time per request phase",
            phases,
            "s",
            "Mean queue, prefill and decode time of finished requests (stacked ≈ e2e).",
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        205,
        timeseries(
            "Queue time p50 / p95 / p99",
            quantiles("vllm:request_queue_time_seconds", q),
            "s",
            "Time requests wait before being scheduled (vllm:request_queue_time_seconds); it adds "
            "directly to the time to first token.",
            [("orange", T_VLLM_QUEUE_P95)],
            overrides=PCT_COLORS,
        ),
        12,
        8,
        alerts=[("VllmP95QueueTimeHigh", T_VLLM_QUEUE_P95)],
    )
    truncated = rate("vllm:request_success_total", f'{q}, finished_reason="length"', "model_name")
    finished = rate("vllm:request_success_total", q, "model_name")
    b.add(
        206,
        timeseries(
            "Truncated answers by model",
            [prom(f"({truncated} or {finished} * 0) / ({finished} > 0)", "{{model_name}}")],
            "percentunit",
            'Share of finished requests cut by max_tokens or the context (finished_reason="length").',
            [("orange", T_VLLM_TRUNCATED)],
            max_=1,
        ),
        12,
        8,
        alerts=[("VllmTruncationRateHigh", T_VLLM_TRUNCATED)],
    )

    b.row(300, "Request details")
    b.add(
        301,
        timeseries(
            "Finished requests by finish reason",
            [prom(rate("vllm:request_success_total", q, "finished_reason"), "{{finished_reason}}")],
            "reqps",
            "stop / length / abort / error / repetition. vLLM V1 may not count client aborts.",
            stack=True,
            overrides=[fixed_color("error", "red"), fixed_color("stop", "green"),
                       fixed_color("length", "yellow"), fixed_color("abort", "purple")],
        ),
        12,
        8,
        alerts=[("VllmRequestErrors", None)],
    )
    errors = rate("vllm:request_success_total", f'{q}, finished_reason="error"', "model_name")
    b.add(
        302,
        timeseries(
            "Error ratio by model",
            [
                prom(
                    f"({errors} or {rate('vllm:request_success_total', q, 'model_name')} * 0) / "
                    f"({rate('vllm:request_success_total', q, 'model_name')} > 0)",
                    "{{model_name}}",
                )
            ],
            "percentunit",
            "Requests finished with reason error / all finished requests.",
            [("orange", T_VLLM_ERR_WARN), ("red", T_VLLM_ERR_CRIT)],
        ),
        12,
        8,
        alerts=[("VllmErrorRateHigh", T_VLLM_ERR_WARN), ("VllmErrorRateCritical", T_VLLM_ERR_CRIT)],
    )
    b.add(
        303,
        timeseries(
            "Running vs waiting",
            [
                prom(f"sum(vllm:num_requests_running{{{q}}})", "running"),
                prom(f"sum(vllm:num_requests_waiting{{{q}}})", "waiting"),
                prom(f"sum by (reason) (vllm:num_requests_waiting_by_reason{{{q}}})", "waiting: {{reason}}"),
            ],
            "short",
            "Waiting by reason (newer vLLM): capacity = no room in the batch or KV cache; deferred "
            "= LoRA budget, KV transfer, blocked.",
            [("orange", T_VLLM_DEFERRED)],
            overrides=[fixed_color("running", "green"), fixed_color("waiting", "orange")],
        ),
        12,
        8,
        alerts=[("VllmRequestsDeferredHigh", T_VLLM_DEFERRED)],
    )
    b.add(
        304,
        timeseries(
            "Preemptions / s by model",
            [prom(rate("vllm:num_preemptions_total", q, "model_name"), "{{model_name}}")],
            "ops",
            "Requests preempted to free KV cache; sustained preemption means the cache is too small.",
            [("orange", T_VLLM_PREEMPT)],
        ),
        12,
        8,
        alerts=[("VllmPreemptionsHigh", T_VLLM_PREEMPT)],
    )
    b.add(
        305,
        timeseries(
            "Engines asleep by model",
            [
                prom(
                    f'count by (model_name) (vllm:engine_sleep_state{{{q}, sleep_state="awake"}} == 0)',
                    "{{model_name}}",
                )
            ],
            "short",
            "Engines in sleep mode (vllm:engine_sleep_state awake = 0); they answer nothing until "
            "woken (/wake_up).",
            draw="points",
        ),
        12,
        8,
        alerts=[("VllmEngineAsleepWithTraffic", None)],
    )
    b.add(
        306,
        timeseries(
            "Admission rejections / s by model",
            [prom(rate("vllm:admission_rejections_total", q, "model_name"), "{{model_name}}")],
            "reqps",
            "Requests vLLM refused at admission (vllm:admission_rejections_total, newer releases).",
        ),
        12,
        8,
        alerts=[("VllmAdmissionRejections", None)],
    )

    b.row(400, "KV cache and GPU")
    b.add(
        401,
        timeseries(
            "KV cache usage by model",
            [prom(f"max by (model_name) (vllm:kv_cache_usage_perc{{{q}}})", "{{model_name}}")],
            "percentunit",
            "vllm:kv_cache_usage_perc (a 0-1 fraction), highest engine per model.",
            [("orange", T_KV_CACHE)],
            max_=1,
        ),
        12,
        8,
        alerts=[("VllmKvCacheSaturated", T_KV_CACHE)],
    )
    b.add(
        402,
        timeseries(
            "Prefix cache hit rate",
            [
                prom(
                    f"sum(rate(vllm:prefix_cache_hits_total{{{q}}}[{RI}])) / "
                    f"(sum(rate(vllm:prefix_cache_queries_total{{{q}}}[{RI}])) > 0)",
                    "hit rate",
                )
            ],
            "percentunit",
            "Prompt tokens served from the prefix cache.",
            max_=1,
        ),
        12,
        8,
    )
    dcgm_gpu_panels(b, 403, w=8)

    b.row(500, "Throughput")
    b.add(
        501,
        timeseries(
            "Request throughput by model",
            [prom(rate("vllm:request_success_total", q, "model_name"), "{{model_name}}")],
            "reqps",
            stack=True,
        ),
        8,
        8,
    )
    b.add(
        502,
        timeseries(
            "Generated tokens / s by model",
            [prom(rate("vllm:generation_tokens_total", q, "model_name"), "{{model_name}}")],
            "short",
            "The throughput alerts fire below the lines only while requests are running.",
            [("orange", T_VLLM_TPUT_CRIT), ("green", T_VLLM_TPUT_LOW)],
            base="red",
        ),
        8,
        8,
        alerts=[("VllmThroughputLow", T_VLLM_TPUT_LOW), ("VllmThroughputCritical", T_VLLM_TPUT_CRIT)],
    )
    b.add(
        503,
        timeseries(
            "Prompt tokens / s by model",
            [prom(rate("vllm:prompt_tokens_total", q, "model_name"), "{{model_name}}")],
            "short",
            "Prefill tokens, cached ones included.",
        ),
        8,
        8,
    )
    b.add(
        504,
        timeseries(
            "API server responses by status",
            [
                prom(
                    f'sum by (status) (rate(http_requests_total{{job=~"$job", instance=~"$instance"}}[{RI}]))',
                    "{{status}}",
                )
            ],
            "reqps",
            "vLLM's HTTP server (2xx / 4xx / 5xx), every route.",
            stack=True,
        ),
        12,
        8,
    )
    gen = 'job=~"$job", instance=~"$instance", handler=~"/v1/.+", handler!~"/v1/models.*"'
    all5 = f"sum by (instance) (rate(http_requests_total{{{gen}}}[{RI}]))"
    err5 = f'sum by (instance) (rate(http_requests_total{{{gen}, status="5xx"}}[{RI}]))'
    b.add(
        505,
        timeseries(
            "HTTP 5xx share by server",
            [prom(f"({err5} or {all5} * 0) / ({all5} > 0)", "{{instance}}")],
            "percentunit",
            "5xx answers / generation requests per vLLM server (http_requests_total). Engine death "
            "and HTTP-layer failures show here, never as finished_reason=\"error\".",
            [("orange", T_VLLM_HTTP_5XX)],
            max_=1,
        ),
        12,
        8,
        alerts=[("VllmHttp5xxRateHigh", T_VLLM_HTTP_5XX), ("VllmEngineDead", None)],
    )

    b.row(600, "Kubernetes: pods and nodes")
    b.add(
        601,
        timeseries(
            "Container restarts",
            [
                prom(
                    f"sum by (namespace, pod) (increase(kube_pod_container_status_restarts_total{{{ns}}}[{RI}])) > 0",
                    "{{namespace}}/{{pod}}",
                )
            ],
            "short",
            "Restarts per pod in each interval (the alert counts restarts over 10 minutes).",
            draw="bars",
            fill=80,
        ),
        8,
        8,
        alerts=[("PodRestartingFrequently", None)],
    )
    b.add(
        602,
        timeseries(
            "Pods not ready",
            [
                prom(
                    f'sum by (namespace, pod) (kube_pod_status_ready{{{ns}, condition="false"}}) > 0',
                    "{{namespace}}/{{pod}}",
                )
            ],
            "short",
            draw="points",
        ),
        8,
        8,
        alerts=[("PodNotReady", None)],
    )
    b.add(
        603,
        timeseries(
            "Container CPU / limit",
            [
                prom(
                    "sum by (namespace, pod, container) (rate(container_cpu_usage_seconds_total"
                    f'{{{ns}, container!="", container!="POD"}}[{RI}])) / '
                    "(sum by (namespace, pod, container) (kube_pod_container_resource_limits"
                    f'{{{ns}, resource="cpu"}}) > 0)',
                    "{{pod}} {{container}}",
                )
            ],
            "percentunit",
            steps=[("orange", T_CONTAINER_CPU)],
        ),
        8,
        8,
        alerts=[("ContainerCpuHigh", T_CONTAINER_CPU)],
    )
    b.add(
        604,
        timeseries(
            "Container memory / limit",
            [
                prom(
                    "sum by (namespace, pod, container) (container_memory_working_set_bytes"
                    f'{{{ns}, container!="", container!="POD"}}) / '
                    "(sum by (namespace, pod, container) (kube_pod_container_resource_limits"
                    f'{{{ns}, resource="memory"}}) > 0)',
                    "{{pod}} {{container}}",
                )
            ],
            "percentunit",
            steps=[("orange", T_CONTAINER_MEM_WARN), ("red", T_CONTAINER_MEM_CRIT)],
        ),
        8,
        8,
        alerts=[
            ("ContainerMemoryNearLimit", T_CONTAINER_MEM_WARN),
            ("ContainerMemoryAtLimit", T_CONTAINER_MEM_CRIT),
        ],
    )
    b.add(
        605,
        timeseries(
            "Node CPU utilisation",
            [
                prom(
                    f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{RI}]))',
                    "{{instance}}",
                )
            ],
            "percentunit",
            "All nodes (node_exporter).",
            [("orange", T_NODE_CPU)],
            max_=1,
        ),
        8,
        8,
        alerts=[("NodeCpuHigh", T_NODE_CPU)],
    )
    b.add(
        606,
        timeseries(
            "Node memory utilisation",
            [
                prom(
                    "1 - node_memory_MemAvailable_bytes / (node_memory_MemTotal_bytes > 0)",
                    "{{instance}}",
                )
            ],
            "percentunit",
            "All nodes (node_exporter).",
            [("orange", T_NODE_MEM)],
            max_=1,
        ),
        8,
        8,
        alerts=[("NodeMemoryHigh", T_NODE_MEM)],
    )
    return b


# --------------------------------------------------------------------------------------
# Triton


def triton() -> Board:
    b = Board(
        "triton",
        "Triton Inference Server",
        "Triton per-model inference metrics (nv_inference_*) and its GPU metrics (nv_gpu_*): "
        "requests, latency, counts, queue and compute time, GPU utilisation, memory, power.",
        ["triton"],
    )
    b.var(ds_var("prometheus", "prometheus", "Prometheus"))
    b.var(query_var("model", "Model", "label_values(nv_inference_request_success, model)"))
    b.var(
        query_var(
            "instance",
            "Instance",
            'label_values(nv_inference_request_success{model=~"$model"}, instance)',
        )
    )
    b.var(
        query_var("gpu", "GPU", 'label_values(nv_gpu_utilization{instance=~"$instance"}, gpu_uuid)')
    )
    q = 'model=~"$model", instance=~"$instance"'
    g = 'gpu_uuid=~"$gpu", instance=~"$instance"'

    def per_request(counter_us: str, by: str = "") -> str:
        num = rate(counter_us, q, by)
        den = rate("nv_inference_request_success", q, by)
        return f"{num} / 1e6 / ({den} > 0)"

    b.row(100, "Overview")
    b.add(
        101,
        stat("Successful requests / s", [prom(rate("nv_inference_request_success", q))], "reqps"),
        4,
        4,
    )
    b.add(
        102,
        stat(
            "Failed requests / s",
            [prom(f"{rate('nv_inference_request_failure', q)} or vector(0)")],
            "reqps",
            "Any failure reason (REJECTED, CANCELED, BACKEND, OTHER).",
            [("red", 0.001)],
            decimals=3,
        ),
        4,
        4,
    )
    b.add(
        103,
        stat(
            "Avg request latency",
            [prom(per_request("nv_inference_request_duration_us"))],
            "s",
            "Request handling time per successful request.",
        ),
        4,
        4,
    )
    b.add(
        104,
        stat(
            "Avg queue time",
            [prom(per_request("nv_inference_queue_duration_us"))],
            "s",
            "Queue wait per successful request.",
            [("orange", T_TRITON_QUEUE)],
        ),
        4,
        4,
    )
    b.add(
        105,
        stat("Pending requests", [prom(f"sum(nv_inference_pending_request_count{{{q}}})")], "short",
             "Requests queued, not yet executing."),
        4,
        4,
    )
    b.add(
        106,
        stat(
            "Requests (range)",
            [prom(f"sum(increase(nv_inference_request_success{{{q}}}[$__range]))", instant=True)],
            "short",
            "Successful requests over the selected range.",
            graph=False,
            decimals=0,
        ),
        4,
        4,
    )

    b.row(200, "Inference")
    b.add(
        201,
        timeseries(
            "Requests per model (success / failure)",
            [
                prom(rate("nv_inference_request_success", q, "model"), "{{model}} success"),
                prom(
                    rate("nv_inference_request_failure", q, "model, reason"),
                    "{{model}} failure {{reason}}",
                ),
            ],
            "reqps",
            "Failures are drawn in red; the alert fires on any failure.",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* failure.*"},
                    "properties": [{"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}],
                }
            ],
        ),
        12,
        8,
        alerts=[("TritonInferenceErrors", None)],
    )
    b.add(
        202,
        timeseries(
            "Inference latency by model",
            [prom(per_request("nv_inference_request_duration_us", "model"), "{{model}}")],
            "s",
            "Average request handling time (cumulative µs counters / successful requests).",
        ),
        12,
        8,
    )
    b.add(
        203,
        timeseries(
            "Inference and execution counts",
            [
                prom(rate("nv_inference_count", q, "model"), "{{model}} inferences"),
                prom(rate("nv_inference_exec_count", q, "model"), "{{model}} executions"),
            ],
            "ops",
            "Inferences (a batch of n counts n) and batch executions per second.",
        ),
        12,
        8,
    )
    b.add(
        204,
        timeseries(
            "Average batch size",
            [
                prom(
                    f"{rate('nv_inference_count', q, 'model')} / "
                    f"({rate('nv_inference_exec_count', q, 'model')} > 0)",
                    "{{model}}",
                )
            ],
            "short",
            "Inferences per execution.",
        ),
        12,
        8,
    )

    b.row(300, "Queue and compute")
    b.add(
        301,
        timeseries(
            "Queue duration per request",
            [prom(per_request("nv_inference_queue_duration_us", "model"), "{{model}}")],
            "s",
            "Average time a request waited in the scheduler queue.",
            [("orange", T_TRITON_QUEUE)],
        ),
        12,
        8,
        alerts=[("TritonQueueSaturation", T_TRITON_QUEUE)],
    )
    b.add(
        302,
        timeseries(
            "Compute duration per request",
            [
                prom(per_request(f"nv_inference_compute_{part}_duration_us"), part)
                for part in ("input", "infer", "output")
            ],
            "s",
            "Average compute input / infer / output time (stacked = compute total).",
            stack=True,
        ),
        12,
        8,
    )
    b.add(
        303,
        timeseries(
            "Pending requests by model",
            [prom(f"sum by (model) (nv_inference_pending_request_count{{{q}}})", "{{model}}")],
            "short",
            "Requests queued, not yet executing.",
            [("orange", T_TRITON_PENDING)],
        ),
        12,
        8,
        alerts=[("TritonPendingRequestsHigh", T_TRITON_PENDING)],
    )
    b.add(
        304,
        timeseries(
            "Failures by reason",
            [prom(rate("nv_inference_request_failure", q, "reason"), "{{reason}}")],
            "reqps",
            "REJECTED = the scheduler refused it (queue full or timeout: capacity), CANCELED = the "
            "client went away, BACKEND = the model failed it, OTHER = anything else.",
            stack=True,
        ),
        12,
        8,
        alerts=[("TritonRequestsRejected", None), ("TritonRequestsCanceledHigh", None)],
    )

    b.row(400, "GPU")
    b.add(
        401,
        timeseries(
            "GPU utilisation",
            [prom(f"nv_gpu_utilization{{{g}}}", "{{instance}} {{gpu_uuid}}")],
            "percentunit",
            "Triton's nv_gpu_utilization (0-1).",
            [("red", T_GPU_UTIL / 100)],
            max_=1,
        ),
        6,
        8,
    )
    b.add(
        402,
        timeseries(
            "GPU memory used",
            [
                prom(
                    f"nv_gpu_memory_used_bytes{{{g}}} / (nv_gpu_memory_total_bytes{{{g}}} > 0)",
                    "{{instance}} {{gpu_uuid}}",
                )
            ],
            "percentunit",
            "Used / total memory.",
            [("orange", T_GPU_MEM_WARN), ("red", T_GPU_MEM_CRIT)],
            max_=1,
        ),
        6,
        8,
    )
    b.add(
        403,
        timeseries(
            "GPU memory (bytes)",
            [
                prom(f"sum(nv_gpu_memory_used_bytes{{{g}}})", "used"),
                prom(f"sum(nv_gpu_memory_total_bytes{{{g}}})", "total"),
            ],
            "bytes",
            overrides=[fixed_color("used", "orange"), fixed_color("total", "blue")],
        ),
        6,
        8,
    )
    b.add(
        404,
        timeseries(
            "GPU power",
            [
                prom(f"nv_gpu_power_usage{{{g}}}", "{{gpu_uuid}} usage"),
                prom(f"nv_gpu_power_limit{{{g}}}", "{{gpu_uuid}} limit"),
            ],
            "watt",
        ),
        6,
        8,
    )
    return b


# --------------------------------------------------------------------------------------
# Provisioning and ConfigMaps

DATASOURCES_YAML = f"""\
# Generated by dashboards/generate.py; edit the generator, not this file.
# Grafana datasource provisioning for the compose stack. The uids are fixed here so that
# Prometheus and Loki alerting can name the Alertmanager; dashboards never use them, they
# pick a datasource through their `prometheus` / `loki` variables.
apiVersion: 1

datasources:
  - name: Prometheus
    type: prometheus
    uid: {DS_UIDS["prometheus"]}
    access: proxy
    url: http://prometheus:9090
    isDefault: true
    editable: false
    jsonData:
      httpMethod: POST
      prometheusType: Prometheus
      timeInterval: 15s
      manageAlerts: true
      alertmanagerUid: {DS_UIDS["alertmanager"]}

  - name: Loki
    type: loki
    uid: {DS_UIDS["loki"]}
    access: proxy
    url: http://loki:3100
    editable: false
    jsonData:
      maxLines: 1000
      manageAlerts: true
      alertmanagerUid: {DS_UIDS["alertmanager"]}

  - name: Alertmanager
    type: alertmanager
    uid: {DS_UIDS["alertmanager"]}
    access: proxy
    url: http://alertmanager:9093
    editable: false
    jsonData:
      implementation: prometheus
      handleGrafanaManagedAlerts: false
"""

DASHBOARDS_YAML = f"""\
# Generated by dashboards/generate.py; edit the generator, not this file.
# Grafana dashboard provider: loads every *.json under the path (mount the dashboard files,
# e.g. dashboards/llm-gateway.json, vllm.json, triton.json, into it).
apiVersion: 1

providers:
  - name: llm-serving
    orgId: 1
    folder: {FOLDER}
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /var/lib/grafana/dashboards
      foldersFromFilesStructure: false
"""


def dashboard_json(d: Json) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def configmap_yaml(uid: str, text: str) -> str:
    body = "".join(f"    {line}\n" if line else "\n" for line in text.rstrip("\n").split("\n"))
    return (
        "# Generated by dashboards/generate.py from dashboards/"
        f"{uid}.json; do not edit.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: grafana-dashboard-{uid}\n"
        "  labels:\n"
        '    grafana_dashboard: "1"\n'
        "    app.kubernetes.io/part-of: llm-gateway\n"
        "  annotations:\n"
        f"    grafana_folder: {FOLDER}\n"
        "data:\n"
        f"  {uid}.json: |-\n"
        f"{body}"
    )


def boards() -> list[Board]:
    return [gateway(), vllm(), triton()]


def outputs() -> dict[pathlib.Path, str]:
    files: dict[pathlib.Path, str] = {}
    alert_map: dict[str, Json] = {}
    k8s_resources = []
    rendered = []
    for b in boards():
        rendered.append(b.render())
        text = dashboard_json(rendered[-1])
        files[HERE / f"{b.uid}.json"] = text
        files[K8S_DIR / f"{b.uid}.yaml"] = configmap_yaml(b.uid, text)
        files[HERE / "img" / f"{b.uid}.svg"] = layout_svg(rendered[-1])
        k8s_resources.append(f"{b.uid}.yaml")
        for name, entry in b.alerts.items():
            if name in alert_map:
                raise ValueError(f"alert {name} linked from two dashboards")
            alert_map[name] = entry
    files[HERE / "alert-panels.json"] = (
        json.dumps(
            {
                "description": "Alert name -> the dashboard panel that shows its signal. Use the "
                "url (relative to Grafana's root) as the alert's dashboard_url annotation. "
                "Generated by dashboards/generate.py.",
                "alerts": dict(sorted(alert_map.items())),
            },
            indent=2,
        )
        + "\n"
    )
    readme = HERE / "README.md"
    files[readme] = with_readme(readme.read_text(encoding="utf-8"), readme_tables(rendered, alert_map))
    files[HERE / "provisioning" / "datasources" / "datasources.yaml"] = DATASOURCES_YAML
    files[HERE / "provisioning" / "dashboards" / "dashboards.yaml"] = DASHBOARDS_YAML
    files[K8S_DIR / "kustomization.yaml"] = (
        "# Generated by dashboards/generate.py; do not edit.\n"
        "# Grafana dashboards as ConfigMaps for the Grafana sidecar (label grafana_dashboard).\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n" + "".join(f"  - {r}\n" for r in k8s_resources)
    )
    return files


TYPE_FILL = {
    "stat": "#dbeafe",
    "gauge": "#dcfce7",
    "timeseries": "#f3f4f6",
    "bargauge": "#fef3c7",
    "logs": "#fce7f3",
}


def layout_svg(d: Json) -> str:
    """A picture of the grid: one box per panel (id, title, type), rows as bars."""
    from xml.sax.saxutils import escape

    cw, rh = 40, 22  # pixels per grid column / grid row
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in d["panels"])
    width, height = GRID_WIDTH * cw, bottom * rh + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">\n',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>\n',
        f'<text x="4" y="18" font-size="14" font-weight="bold">{escape(d["title"])} '
        f"(uid {escape(d['uid'])})</text>\n",
    ]
    for p in d["panels"]:
        g = p["gridPos"]
        x, y, w, h = g["x"] * cw, g["y"] * rh + 26, g["w"] * cw, g["h"] * rh
        if p["type"] == "row":
            out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h - 2}" fill="#374151"/>\n')
            out.append(f'<text x="{x + 6}" y="{y + 15}" fill="#ffffff" font-weight="bold">'
                       f'{p["id"]} {escape(p["title"])}</text>\n')
            continue
        fill = TYPE_FILL.get(p["type"], "#eeeeee")
        out.append(f'<rect x="{x + 1}" y="{y + 1}" width="{w - 2}" height="{h - 2}" rx="3" '
                   f'fill="{fill}" stroke="#9ca3af"/>\n')
        chars = max(4, w // 7)
        title = p["title"] if len(p["title"]) <= chars else p["title"][: chars - 1] + "…"
        out.append(f'<text x="{x + 5}" y="{y + 15}" font-weight="bold">{p["id"]}</text>\n')
        out.append(f'<text x="{x + 5}" y="{y + 29}">{escape(title)}</text>\n')
        out.append(f'<text x="{x + 5}" y="{y + 43}" fill="#6b7280">{p["type"]}</text>\n')
    out.append("</svg>\n")
    return "".join(out)


README_BEGIN = "<!-- generated: panels (generate.py) -->\n"
README_END = "<!-- end: panels -->\n"


def readme_tables(rendered: list[Json], alert_map: dict[str, Json]) -> str:
    """Markdown: one table of rows and panels per dashboard, then the alert links."""
    out = []
    for d in rendered:
        n = sum(1 for p in d["panels"] if p["type"] != "row")
        out.append(f"### {d['title']} (`{d['uid']}.json`, {n} panels)\n\n")
        out.append(f"![{d['title']} layout](img/{d['uid']}.svg)\n\n")
        out.append("| row | panels (id title) |\n|---|---|\n")
        row: Json | None = None
        cells: list[str] = []
        for p in d["panels"] + [{"type": "row", "id": -1, "title": ""}]:
            if p["type"] == "row":
                if row is not None:
                    out.append(f"| {row['id']} {row['title']} | {' · '.join(cells)} |\n")
                row, cells = p, []
            else:
                cells.append(f"{p['id']} {p['title']}")
        out.append("\n")
    out.append("### Alert links\n\n| alert | dashboard | panel | threshold |\n|---|---|---|---|\n")
    for name, e in sorted(alert_map.items()):
        t = "–" if e["threshold"] is None else f"{e['threshold']:g}"
        out.append(f"| {name} | `{e['dashboard_uid']}` | {e['panel_id']} {e['panel_title']} | {t} |\n")
    return "".join(out)


def with_readme(text: str, tables: str) -> str:
    if README_BEGIN not in text or README_END not in text:
        raise ValueError("dashboards/README.md lacks the generated-panels markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_BEGIN}{tables}{README_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if committed files differ")
    args = ap.parse_args(argv)
    files = outputs()
    if args.check:
        stale = []
        for path, text in files.items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.relative_to(REPO))
        # Files the generator no longer produces would be served by Grafana too.
        for d, pattern in ((HERE, "*.json"), (K8S_DIR, "*.yaml")):
            for path in d.glob(pattern):
                if path not in files:
                    stale.append(path.relative_to(REPO))
        if stale:
            for s in stale:
                sys.stderr.write(f"out of date: {s} (run python3 dashboards/generate.py)\n")
            return 1
        sys.stdout.write(f"generate --check: {len(files)} files up to date\n")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {len(files)} files\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

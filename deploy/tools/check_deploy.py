#!/usr/bin/env python3
"""Cross-file checks of deploy/ that no single validator does.

Each sub-command prints what it checked or the problems it found, and exits 1 on a
problem (2 on bad usage). deploy/test.sh runs them and counts PASS/FAIL.

  compose-paths  RESOLVED_JSON      every bind mount, secret file, build context and
                                    Dockerfile of the resolved compose model exists
  compose-wiring RESOLVED_JSON PROM_YML LOKI_YAML DATASOURCES_YAML DASHBOARD_PROVIDERS_YAML
                                    scrape targets, Loki ruler mount, remote write,
                                    Alertmanager secrets, Grafana datasources and dashboards
                                    agree with the compose services
  prom-rewrite   PROM_YML RULES_DIR OUT
                                    copy of prometheus.yml with the container rule path
                                    replaced by the repository path (for promtool)
  loki-config    LOKI_YAML          key checks of the Loki config (no Loki binary offline)
  loki-rules     DIR                every file is a rule file Loki's ruler can load
  k8s-split      RENDERED_YAML OUT_JSON
                                    rendered manifests to a JSON array
  k8s-wiring     RENDERED_YAML [--namespace NS] [--tenants a,b]
                                    selectors, ports, config maps, probes agree
  cli-flags      BIN_DIR RESOLVED_JSON RENDERED_YAML...
                                    every --flag given to the project's binaries in compose
                                    and Kubernetes is one the built binary accepts
  k8s-rules      RENDERED_YAML OUT_DIR
                                    PrometheusRule specs to rule files (for promtool);
                                    Loki rule ConfigMaps and dashboard ConfigMaps parse
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import yaml

# What the project's own image serves on, per binary (deploy/Dockerfile, compose commands).
OWN_BINARIES = {"llm-gateway", "log-shipper", "vllm-sim", "loadgen"}


def load_yaml(path: str):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all_yaml(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.notes: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def ok(self, msg: str) -> None:
        self.notes.append(msg)

    def finish(self) -> int:
        for n in self.notes:
            print(f"  ok: {n}")
        for p in self.items:
            print(f"  problem: {p}")
        return 1 if self.items else 0


# ---------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------


def compose_paths(resolved_json: str) -> int:
    model = json.load(open(resolved_json, encoding="utf-8"))
    pr = Problems()
    for name, svc in sorted(model.get("services", {}).items()):
        for vol in svc.get("volumes", []) or []:
            if vol.get("type") == "bind":
                src = vol.get("source", "")
                if not os.path.exists(src):
                    pr.add(f"service {name}: bind source {src} does not exist")
                else:
                    pr.ok(f"{name}: {src} -> {vol.get('target')}")
        build = svc.get("build")
        if build:
            ctx = build.get("context", "")
            dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
            if not os.path.isdir(ctx):
                pr.add(f"service {name}: build context {ctx} does not exist")
            elif not os.path.isfile(dockerfile):
                pr.add(f"service {name}: Dockerfile {dockerfile} does not exist")
    for name, sec in sorted((model.get("secrets") or {}).items()):
        f = sec.get("file")
        if f and not os.path.isfile(f):
            pr.add(f"secret {name}: file {f} does not exist")
        elif f:
            pr.ok(f"secret {name}: {f}")
    return pr.finish()


def _service_ports(svc: dict) -> set[int]:
    """Ports a service listens on inside the network, from expose/ports/command flags."""
    ports: set[int] = set()
    for p in svc.get("expose", []) or []:
        ports.add(int(str(p).split("/")[0]))
    for p in svc.get("ports", []) or []:
        if isinstance(p, dict) and p.get("target"):
            ports.add(int(p["target"]))
    for arg in svc.get("command", []) or []:
        arg = str(arg)
        for flag in ("--listen=", "--metrics-listen=", "--port="):
            if arg.startswith(flag):
                ports.add(int(arg.rsplit(":", 1)[-1].rsplit("=", 1)[-1]))
    return ports


def compose_wiring(resolved_json, prom_yml, loki_yaml, datasources_yaml, providers_yaml) -> int:
    model = json.load(open(resolved_json, encoding="utf-8"))
    services = model.get("services", {})
    pr = Problems()

    # Every service has a health check (the traffic job included).
    for name, svc in sorted(services.items()):
        hc = svc.get("healthcheck") or {}
        if not hc.get("test") or hc.get("disable"):
            pr.add(f"service {name} has no healthcheck")
        img = svc.get("image", "")
        if not img or img.endswith(":latest") or ":" not in img.rsplit("/", 1)[-1]:
            pr.add(f"service {name}: image {img!r} is not pinned to a tag")
        cmd = svc.get("command") or []
        if svc.get("build") and cmd and cmd[0] not in OWN_BINARIES:
            pr.add(f"service {name}: runs {cmd[0]!r}, not one of the image's binaries")
    pr.ok(f"{len(services)} services have health checks and pinned images")

    # Prometheus scrape targets are compose services on ports they listen on.
    prom = load_yaml(prom_yml)
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []) or []:
            for target in sc.get("targets", []):
                host, _, port = target.rpartition(":")
                if host == "localhost":
                    continue
                if host not in services:
                    pr.add(f"scrape job {job['job_name']}: {host} is not a compose service")
                    continue
                ports = _service_ports(services[host])
                if ports and int(port) not in ports:
                    pr.add(
                        f"scrape job {job['job_name']}: {target} but {host} listens on {sorted(ports)}"
                    )
        for sd in job.get("dns_sd_configs", []) or []:
            for n in sd.get("names", []):
                if n not in services:
                    pr.add(f"scrape job {job['job_name']}: DNS name {n} is not a compose service")
    for am in (prom.get("alerting") or {}).get("alertmanagers", []):
        for sc in am.get("static_configs", []):
            for t in sc.get("targets", []):
                if t.split(":")[0] not in services:
                    pr.add(f"alertmanager target {t} is not a compose service")
    pr.ok("Prometheus scrape and alerting targets are compose services")

    # Prometheus mounts its rules where rule_files looks.
    prom_svc = services.get("prometheus", {})
    targets = {v.get("target") for v in prom_svc.get("volumes", [])}
    for rf in prom.get("rule_files", []):
        if os.path.dirname(rf) not in targets:
            pr.add(f"rule_files {rf}: directory is not mounted into prometheus")

    # Loki: ruler directory layout <dir>/<tenant>/, alertmanager and remote write targets.
    loki = load_yaml(loki_yaml)
    ruler = loki.get("ruler", {})
    rdir = ((ruler.get("storage") or {}).get("local") or {}).get("directory")
    tenant = "fake" if loki.get("auth_enabled") is False else None
    loki_targets = {
        v.get("target"): v.get("source") for v in services.get("loki", {}).get("volumes", [])
    }
    if tenant is None:
        pr.add("Loki auth_enabled must be false for the single-tenant compose stack")
    elif f"{rdir}/{tenant}" not in loki_targets:
        pr.add(f"no rules mounted at {rdir}/{tenant} (Loki ruler layout <dir>/<tenant>/)")
    else:
        src = loki_targets[f"{rdir}/{tenant}"]
        if not src.rstrip("/").endswith("logql-rules/loki"):
            pr.add(f"{rdir}/{tenant} is mounted from {src}, expected logql-rules/loki")
        else:
            pr.ok(f"Loki ruler reads {src} as tenant {tenant}")
    am_host = urlparse(ruler.get("alertmanager_url", "")).hostname
    if am_host not in services:
        pr.add(f"Loki ruler alertmanager_url host {am_host!r} is not a compose service")
    rw = (ruler.get("remote_write") or {})
    if rw.get("enabled"):
        for cname, client in (rw.get("clients") or {}).items():
            host = urlparse(client.get("url", "")).hostname
            if host not in services:
                pr.add(f"Loki remote_write client {cname}: {host!r} is not a compose service")
            elif "--web.enable-remote-write-receiver" not in (services[host].get("command") or []):
                pr.add(f"Loki remote-writes to {host} but it lacks --web.enable-remote-write-receiver")
        pr.ok("Loki ruler remote-writes recording rules to Prometheus")
    if "-config.file=/etc/loki/loki.yaml" not in (services.get("loki", {}).get("command") or []):
        pr.add("loki does not run with -config.file=/etc/loki/loki.yaml")
    if "/etc/loki/loki.yaml" not in loki_targets:
        pr.add("loki.yaml is not mounted at /etc/loki/loki.yaml")

    # Log shipper tails the file the gateway writes, on a shared volume.
    gw = services.get("gateway", {})
    sh = services.get("log-shipper", {})
    ev = next((a.split("=", 1)[1] for a in gw.get("command", []) if a.startswith("--events=")), None)
    inp = next((a.split("=", 1)[1] for a in sh.get("command", []) if a.startswith("--input=")), None)
    if not ev or ev != inp:
        pr.add(f"gateway --events={ev} but log-shipper --input={inp}")
    gw_vols = {v["target"]: v.get("source") for v in gw.get("volumes", []) if v.get("type") == "volume"}
    sh_vols = {v["target"]: v.get("source") for v in sh.get("volumes", []) if v.get("type") == "volume"}
    d = os.path.dirname(ev or "/nonexistent/x")
    if gw_vols.get(d) is None or gw_vols.get(d) != sh_vols.get(d):
        pr.add(f"gateway and log-shipper do not share a volume at {d}")
    else:
        pr.ok(f"gateway and log-shipper share volume {gw_vols[d]} at {d}")
    pos = next((a.split("=", 1)[1] for a in sh.get("command", []) if a.startswith("--positions=")), None)
    if not pos or os.path.dirname(pos) not in sh_vols:
        pr.add(f"log-shipper positions {pos} are not on a volume")
    loki_url = next((a.split("=", 1)[1] for a in sh.get("command", []) if a.startswith("--loki-url=")), "")
    if urlparse(loki_url).hostname != "loki":
        pr.add(f"log-shipper pushes to {loki_url}, not the loki service")

    # The gateway config knows the models the simulator serves and loadgen asks for.
    gw_cfg_src = next(
        (v["source"] for v in gw.get("volumes", []) if v.get("target") == "/etc/llm-gateway/gateway.toml"),
        None,
    )
    cfg_arg = next((a.split("=", 1)[1] for a in gw.get("command", []) if a.startswith("--config=")), None)
    if cfg_arg != "/etc/llm-gateway/gateway.toml" or not gw_cfg_src or not os.path.isfile(gw_cfg_src):
        pr.add(f"gateway --config={cfg_arg} is not a mounted file ({gw_cfg_src})")
    else:
        gcfg = tomllib.load(open(gw_cfg_src, "rb"))
        models = set((gcfg.get("models") or {}).keys())
        env_up = (gw.get("environment") or {}).get("LLM_GATEWAY_UPSTREAM")
        if env_up and "default" not in (gcfg.get("pools") or {}):
            pr.add("LLM_GATEWAY_UPSTREAM replaces pool 'default', which the gateway config lacks")
        if env_up and (gcfg.get("routing") or {}).get("default_pool", "default") != "default":
            pr.add("the default pool is not 'default': LLM_UPSTREAM_URL would not route anything")
        sim = services.get("vllm-sim", {})
        served = [a.split("=", 1)[1] for a in sim.get("command", []) if a.startswith("--model=")]
        for m in served:
            if m not in models:
                pr.add(f"vllm-sim serves {m}, not in the gateway's [models] ({sorted(models)}): its metrics say model=other")
        for name, svc in services.items():
            cmd = svc.get("command") or []
            if cmd[:1] == ["loadgen"]:
                lm = next((a.split("=", 1)[1] for a in cmd if a.startswith("--model=")), None)
                if lm not in served:
                    pr.add(f"{name} asks for model {lm}, which vllm-sim does not serve ({served})")
                if gcfg.get("tenants") and not any(a.startswith("--api-key") for a in cmd):
                    pr.add(f"{name} sends no --api-key but the gateway config has tenants")
        pr.ok(f"gateway config {os.path.basename(gw_cfg_src)}: models {sorted(models)}, sim serves {served}")

    # Alertmanager: every *_file it reads is provided to the container.
    am = services.get("alertmanager", {})
    am_cfg_src = next(
        (v["source"] for v in am.get("volumes", []) if v.get("target") == "/etc/alertmanager/alertmanager.yml"),
        None,
    )
    if not am_cfg_src:
        pr.add("alertmanager.yml is not mounted at /etc/alertmanager/alertmanager.yml")
    elif not os.path.isfile(am_cfg_src):
        pr.add(f"{am_cfg_src} does not exist")
    else:
        provided = set()
        for sec in am.get("secrets", []) or []:
            target = sec.get("target") or sec["source"]
            provided.add(target if target.startswith("/") else f"/run/secrets/{target}")
        mounts = [v["target"] for v in am.get("volumes", [])]
        needed = sorted(set(_file_refs(load_yaml(am_cfg_src))))
        for path in needed:
            if path in provided or any(path.startswith(m.rstrip("/") + "/") for m in mounts):
                continue
            if path.startswith("/etc/alertmanager/templates/"):
                continue
            pr.add(f"alertmanager.yml reads {path}, which the compose file does not provide")
        pr.ok(f"Alertmanager files provided: {', '.join(needed) or 'none needed'}")

    # Grafana: datasources point at compose services; dashboards where the provider looks.
    ds = load_yaml(datasources_yaml)
    for d in ds.get("datasources", []):
        u = urlparse(d.get("url", ""))
        if u.hostname not in services:
            pr.add(f"datasource {d.get('name')}: {u.hostname!r} is not a compose service")
        elif u.port and _service_ports(services[u.hostname]) and u.port not in _service_ports(services[u.hostname]):
            pr.add(f"datasource {d.get('name')}: port {u.port} not served by {u.hostname}")
    provs = load_yaml(providers_yaml)
    graf = services.get("grafana", {})
    gvols = {v["target"]: v.get("source") for v in graf.get("volumes", []) if v.get("type") == "bind"}
    for p in provs.get("providers", []):
        path = (p.get("options") or {}).get("path", "")
        dash = {t: s for t, s in gvols.items() if t.startswith(path.rstrip("/") + "/")}
        if not dash:
            pr.add(f"dashboard provider {p.get('name')}: nothing mounted under {path}")
        for t, s in dash.items():
            try:
                j = json.load(open(s, encoding="utf-8"))
                if not j.get("title") or "panels" not in j:
                    pr.add(f"{s} mounted at {t} is not a dashboard (no title/panels)")
            except (OSError, ValueError) as e:
                pr.add(f"{s}: {e}")
        pr.ok(f"dashboards under {path}: {', '.join(sorted(os.path.basename(t) for t in dash))}")
    home = (graf.get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and home not in gvols:
        pr.add(f"Grafana home dashboard {home} is not mounted")
    return pr.finish()


def _file_refs(node):
    """Values of *_file keys (and *_files lists) in an Alertmanager config."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and k.endswith("_file") and isinstance(v, str):
                yield v
            else:
                yield from _file_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _file_refs(v)


def prom_rewrite(prom_yml: str, rules_dir: str, out: str) -> int:
    cfg = load_yaml(prom_yml)
    rules_dir = os.path.abspath(rules_dir)
    new = []
    for rf in cfg.get("rule_files", []):
        if not rf.startswith("/etc/prometheus/rules/"):
            print(f"  problem: rule_files entry {rf} is not under /etc/prometheus/rules/")
            return 1
        new.append(rf.replace("/etc/prometheus/rules", rules_dir, 1))
    import glob

    matched = sorted(f for pat in new for f in glob.glob(pat))
    if not matched:
        print(f"  problem: rule_files {new} match no file")
        return 1
    cfg["rule_files"] = new
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    print(f"  ok: rule_files match {len(matched)} files: {', '.join(os.path.basename(m) for m in matched)}")
    return 0


# ---------------------------------------------------------------------------
# Loki
# ---------------------------------------------------------------------------

# Top-level blocks of Loki 3.x's configuration (docs: configuration reference).
LOKI_TOP_LEVEL = {
    "target", "auth_enabled", "ballast_bytes", "server", "distributor", "querier",
    "query_scheduler", "frontend", "query_range", "ruler", "ruler_storage", "ingester_client",
    "ingester", "block_builder", "block_scheduler", "pattern_ingester", "index_gateway",
    "bloom_build", "bloom_gateway", "storage_config", "chunk_store_config", "schema_config",
    "compactor", "compactor_grpc_client", "limits_config", "frontend_worker", "table_manager",
    "memberlist", "runtime_config", "operational_config", "tracing", "analytics", "common",
    "shutdown_delay", "metrics_namespace", "kafka_config", "dataobj", "ui",
}


def loki_config(path: str) -> int:
    cfg = load_yaml(path)
    pr = Problems()
    if not isinstance(cfg, dict):
        print("  problem: not a YAML mapping")
        return 1
    unknown = sorted(set(cfg) - LOKI_TOP_LEVEL)
    if unknown:
        pr.add(f"unknown top-level keys {unknown}")
    limits = cfg.get("limits_config") or {}
    if limits.get("allow_structured_metadata") is not True:
        pr.add("limits_config.allow_structured_metadata must be true (request_id is structured metadata)")
    schemas = (cfg.get("schema_config") or {}).get("configs") or []
    if not schemas:
        pr.add("schema_config.configs is empty")
    else:
        last = schemas[-1]
        if last.get("schema") != "v13" or last.get("store") != "tsdb":
            pr.add(f"the newest schema must be v13 on tsdb (structured metadata), got {last}")
        if last.get("object_store") != "filesystem":
            pr.add("object_store must be filesystem for the single-binary stack")
        if (last.get("index") or {}).get("period") != "24h":
            pr.add("tsdb index period must be 24h")
    ruler = cfg.get("ruler") or {}
    storage = ruler.get("storage") or {}
    if storage.get("type") != "local" or not (storage.get("local") or {}).get("directory"):
        pr.add("ruler.storage must be type local with a directory")
    if not ruler.get("alertmanager_url"):
        pr.add("ruler.alertmanager_url is not set")
    if ruler.get("enable_api") is not True:
        pr.add("ruler.enable_api must be true (rules visible in Grafana)")
    rp = ruler.get("rule_path", "")
    if rp and (storage.get("local") or {}).get("directory", "").startswith(rp):
        pr.add("ruler.rule_path (scratch) must differ from the rules directory")
    rw = ruler.get("remote_write") or {}
    if rw.get("enabled"):
        if "client" in rw:
            pr.add("ruler.remote_write.client was removed in Loki 3; use clients")
        if not rw.get("clients"):
            pr.add("ruler.remote_write.enabled without clients")
        if not (ruler.get("wal") or {}).get("dir"):
            pr.add("ruler.wal.dir must be set (on the data volume) when remote write is on")
    if "enable_alertmanager_v2" in ruler:
        pr.add("ruler.enable_alertmanager_v2 was removed in Loki 3")
    common = cfg.get("common") or {}
    if not common.get("path_prefix"):
        pr.add("common.path_prefix is not set")
    pr.ok(f"Loki config keys: {', '.join(sorted(cfg))}")
    return pr.finish()


def loki_rules(directory: str) -> int:
    pr = Problems()
    files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    if not files:
        pr.add(f"{directory} holds no rule file")
    for f in files:
        # Loki's local ruler storage parses every file of the tenant directory.
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            pr.add(f"{f.name}: not YAML: {e}")
            continue
        groups = (doc or {}).get("groups") if isinstance(doc, dict) else None
        if not isinstance(groups, list) or not groups:
            pr.add(f"{f.name}: no `groups` list: Loki's ruler would reject the whole tenant")
            continue
        n = 0
        for g in groups:
            if not g.get("name"):
                pr.add(f"{f.name}: group without name")
            for r in g.get("rules") or []:
                n += 1
                if not (r.get("alert") or r.get("record")) or not r.get("expr"):
                    pr.add(f"{f.name}: group {g.get('name')}: rule without alert/record or expr")
        pr.ok(f"{f.name}: {len(groups)} groups, {n} rules")
    for d in sorted(p for p in Path(directory).iterdir() if p.is_dir()):
        pr.ok(f"subdirectory {d.name} is not read by the ruler")
    return pr.finish()


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------

BUILTIN_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1", "batch/v1"}


def k8s_split(rendered: str, out_json: str) -> int:
    docs = load_all_yaml(rendered)
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(docs, f)
    kinds = sorted({f"{d.get('apiVersion')}/{d.get('kind')}" for d in docs})
    print(f"  ok: {len(docs)} objects: {', '.join(kinds)}")
    return 0 if docs else 1


def _quantity_bytes(q) -> int | None:
    """Kubernetes quantity (1Gi, 500Mi, 1G, 1000) in bytes."""
    if q is None:
        return None
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        return None
    mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return int(m.group(1)) * mult


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def k8s_wiring(rendered: str, namespace: str | None, tenants: list[str]) -> int:
    docs = load_all_yaml(rendered)
    pr = Problems()
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}

    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        pr.add(f"expected one Deployment, found {len(deps)}")
        return pr.finish()
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    if not _matches(spec["selector"].get("matchLabels", {}), pod_labels):
        pr.add("Deployment selector does not match its pod labels")
    containers = {c["name"]: c for c in pod.get("containers", [])}
    sidecars = {c["name"]: c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"}
    allc = {**containers, **sidecars}
    if "llm-gateway" not in containers:
        pr.add("no llm-gateway container")
    if "log-shipper" not in allc:
        pr.add("no log-shipper sidecar")
    port_names = {p["name"]: p["containerPort"] for c in allc.values() for p in c.get("ports", []) if p.get("name")}
    port_numbers = {p["containerPort"] for c in allc.values() for p in c.get("ports", [])}

    # Both containers share the events emptyDir; positions are on an emptyDir too.
    vols = {v["name"]: v for v in pod.get("volumes", [])}

    def mount_of(c, path):
        return next((m for m in c.get("volumeMounts", []) if m["mountPath"] == path), None)

    gw = containers.get("llm-gateway", {})
    sh = allc.get("log-shipper", {})
    gw_args, sh_args = gw.get("args", []), sh.get("args", [])
    ev = next((a.split("=", 1)[1] for a in gw_args if a.startswith("--events=")), None)
    inp = next((a.split("=", 1)[1] for a in sh_args if a.startswith("--input=")), None)
    pos = next((a.split("=", 1)[1] for a in sh_args if a.startswith("--positions=")), None)
    if not ev or ev != inp:
        pr.add(f"gateway --events={ev} but shipper --input={inp}")
    else:
        d = os.path.dirname(ev)
        gm, sm = mount_of(gw, d), mount_of(sh, d)
        if not gm or not sm or gm["name"] != sm["name"] or "emptyDir" not in vols.get(gm["name"], {}):
            pr.add(f"gateway and shipper do not share an emptyDir at {d}")
        else:
            pr.ok(f"events {ev} on shared emptyDir {gm['name']}")
    if pos:
        pm = next((m for m in sh.get("volumeMounts", []) if pos.startswith(m["mountPath"].rstrip("/") + "/")), None)
        if not pm or "emptyDir" not in vols.get(pm["name"], {}):
            pr.add(f"positions {pos} are not on an emptyDir")
        elif pm.get("readOnly"):
            pr.add(f"positions {pos} are on a read-only mount")
    else:
        pr.add("shipper has no --positions")

    # Every volume mount names a volume; config maps exist in the render.
    for c in allc.values():
        for m in c.get("volumeMounts", []):
            if m["name"] not in vols:
                pr.add(f"{c['name']}: mount of unknown volume {m['name']}")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref and ("ConfigMap", ref["name"]) not in names and not ref.get("optional"):
                pr.add(f"{c['name']}: env {e['name']} from missing ConfigMap {ref['name']}")
            elif ref:
                cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref["name"])
                if ref["key"] not in (cm.get("data") or {}):
                    pr.add(f"{c['name']}: env {e['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            p = (c.get(probe) or {}).get("httpGet")
            if p:
                port = p["port"]
                if isinstance(port, str) and port not in port_names:
                    pr.add(f"{c['name']}: {probe} names unknown port {port}")
                if isinstance(port, int) and port not in port_numbers:
                    pr.add(f"{c['name']}: {probe} port {port} is not a container port")
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            pr.add(f"{c['name']}: needs readOnlyRootFilesystem true and allowPrivilegeEscalation false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            pr.add(f"{c['name']}: capabilities must drop ALL")
        if not (c.get("resources") or {}).get("requests"):
            pr.add(f"{c['name']}: no resource requests")
    if (pod.get("securityContext") or {}).get("runAsNonRoot") is not True:
        pr.add("pod securityContext.runAsNonRoot must be true")
    for v in vols.values():
        cm = v.get("configMap")
        if cm and ("ConfigMap", cm["name"]) not in names:
            pr.add(f"volume {v['name']}: ConfigMap {cm['name']} is not in the render")
    gw_health = gw.get("readinessProbe", {}).get("httpGet", {}).get("path")
    if gw_health != "/readyz" or gw.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        pr.add("gateway probes must be /readyz (readiness) and /healthz (liveness)")

    # Grace period longer than the gateway's own drain.
    cfg_vol = next((v for v in vols.values() if v.get("configMap")), None)
    gateway_toml = None
    if cfg_vol:
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cfg_vol["configMap"]["name"])
        text = (cm.get("data") or {}).get("gateway.toml")
        if text is None:
            pr.add(f"ConfigMap {cm['metadata']['name']} has no gateway.toml")
        else:
            gateway_toml = tomllib.loads(text)
    if gateway_toml is not None:
        grace = (gateway_toml.get("server") or {}).get("shutdown_grace_secs", 30)
        pre = 0
        pre_cmd = ((gw.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command", [])
        if pre_cmd[:1] == ["sleep"]:
            pre = int(pre_cmd[1])
        flush = next((int(a.split("=", 1)[1]) // 1000 for a in sh_args if a.startswith("--shutdown-timeout-ms=")), 0)
        tgp = pod.get("terminationGracePeriodSeconds", 30)
        budget = f"gateway grace {grace} + preStop {pre} + shipper flush {flush}"
        if tgp <= grace + pre + flush:
            pr.add(f"terminationGracePeriodSeconds {tgp} <= {budget}")
        else:
            pr.ok(f"terminationGracePeriodSeconds {tgp} > {budget}")
        # The events file must rotate inside the emptyDir's sizeLimit, or the pod is evicted.
        ev_cfg = gateway_toml.get("events") or {}
        max_bytes = int(ev_cfg.get("max_file_bytes", 0))
        files = 1 + int(ev_cfg.get("max_files", 5))
        ev_vol = vols.get((mount_of(gw, os.path.dirname(ev or "/x/x")) or {}).get("name", ""), {})
        limit = _quantity_bytes((ev_vol.get("emptyDir") or {}).get("sizeLimit"))
        if max_bytes <= 0:
            pr.add("gateway.toml [events] max_file_bytes is 0: the events file grows until the emptyDir fills")
        elif limit and files * max_bytes >= limit:
            pr.add(f"{files} event files x {max_bytes} B do not fit the emptyDir sizeLimit ({limit} B)")
        else:
            pr.ok(f"events rotate at {max_bytes} B, {files} files, emptyDir limit {limit} B")
        have = sorted((gateway_toml.get("tenants") or {}).keys())
        for t in tenants:
            if t not in have:
                pr.add(f"tenant {t} missing from gateway.toml (has {have})")
            elif not gateway_toml["tenants"][t].get("api_key_sha256"):
                pr.add(f"tenant {t} has no api_key_sha256")
            elif not gateway_toml["tenants"][t].get("max_concurrent_requests"):
                pr.add(f"tenant {t} has no max_concurrent_requests")
        if tenants:
            pr.ok(f"tenants in gateway.toml: {', '.join(have)}")
            if not any("prompt_usd_per_million_tokens" in m for m in (gateway_toml.get("models") or {}).values()):
                pr.add("no model prices in the overlay's gateway.toml")

    # Service -> pods, ServiceMonitor -> Service, PDB -> pods.
    svcs = by_kind.get("Service", [])
    main_port_names = {p["name"] for c in containers.values() for p in c.get("ports", []) if p.get("name")}
    if not svcs:
        pr.add("no Service")
    for s in svcs:
        if not _matches(s["spec"].get("selector", {}), pod_labels):
            pr.add(f"Service {s['metadata']['name']} selector does not match the pods")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            # A named targetPort must be a port of a main container (see service.yaml).
            if isinstance(tp, str) and tp not in main_port_names:
                pr.add(f"Service port {p['name']}: named targetPort {tp} is not a main-container port")
            if isinstance(tp, int) and tp not in port_numbers:
                pr.add(f"Service port {p['name']}: targetPort {tp} is not a container port")
    svc_ports = {p["name"] for s in svcs for p in s["spec"]["ports"]}
    if not {"http"} <= svc_ports:
        pr.add(f"Service must expose port http, has {sorted(svc_ports)}")
    sms = by_kind.get("ServiceMonitor", [])
    if not sms:
        pr.add("no ServiceMonitor")
    for sm in sms:
        sel = sm["spec"]["selector"].get("matchLabels", {})
        if not any(_matches(sel, s["metadata"].get("labels", {})) for s in svcs):
            pr.add(f"ServiceMonitor {sm['metadata']['name']} selects no Service")
        eps = {e.get("port") for e in sm["spec"].get("endpoints", [])}
        if eps != svc_ports:
            pr.add(f"ServiceMonitor endpoints {sorted(eps)} != Service ports {sorted(svc_ports)}")
        else:
            pr.ok(f"ServiceMonitor scrapes {', '.join(sorted(eps))}")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not pdbs:
        pr.add("no PodDisruptionBudget")
    for p in pdbs:
        if not _matches(p["spec"]["selector"].get("matchLabels", {}), pod_labels):
            pr.add("PodDisruptionBudget selects no gateway pod")
        if p["spec"].get("minAvailable") != 1:
            pr.add("PodDisruptionBudget minAvailable must be 1")
        if spec.get("replicas", 1) < 2:
            pr.add("with minAvailable 1, the Deployment needs >= 2 replicas to allow drains")

    # Generated resources from rules/ and dashboards/.
    if not by_kind.get("PrometheusRule"):
        pr.add("no PrometheusRule (deploy/k8s/base/rules)")
    if not any((d["metadata"].get("labels") or {}).get("grafana_dashboard") for d in by_kind.get("ConfigMap", [])):
        pr.add("no dashboard ConfigMap (deploy/k8s/base/dashboards)")

    if namespace:
        for d in docs:
            if d["kind"] == "Namespace":
                continue
            if d["metadata"].get("namespace") != namespace:
                pr.add(f"{d['kind']}/{d['metadata']['name']} is not in namespace {namespace}")
        if ("Namespace", namespace) not in names:
            pr.add(f"no Namespace {namespace}")
    else:
        for d in docs:
            if d["metadata"].get("namespace"):
                pr.add(f"base must be namespace-less: {d['kind']}/{d['metadata']['name']}")
    pr.ok(f"{len(docs)} objects wired together")
    return pr.finish()


def _own_commands(resolved_json: str, rendered: list[str]):
    """(where, argv) of every command of the project's binaries in compose and k8s."""
    model = json.load(open(resolved_json, encoding="utf-8"))
    for name, svc in sorted(model.get("services", {}).items()):
        cmd = [str(a) for a in svc.get("command") or []]
        if cmd and cmd[0] in OWN_BINARIES:
            yield f"compose service {name}", cmd
    for r in rendered:
        for d in load_all_yaml(r):
            pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
                if argv and argv[0] in OWN_BINARIES:
                    yield f"{os.path.basename(r)} {d['kind']}/{d['metadata']['name']} {c['name']}", argv


def cli_flags(bin_dir: str, resolved_json: str, *rendered: str) -> int:
    import subprocess

    pr = Problems()
    helps: dict[str, str] = {}
    for where, argv in _own_commands(resolved_json, list(rendered)):
        binary = argv[0]
        if binary not in helps:
            path = os.path.join(bin_dir, binary)
            if not os.access(path, os.X_OK):
                pr.add(f"{path} is not built")
                helps[binary] = ""
                continue
            out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
            helps[binary] = out.stdout + out.stderr
            if "--help" not in helps[binary]:
                pr.add(f"{path} --help printed no usage (stale build?)")
                helps[binary] = ""
        if not helps[binary]:
            continue
        i = 1
        sub = None
        if binary == "loadgen" and len(argv) > 1 and not argv[1].startswith("-"):
            sub = argv[1]
            if not any(sub in line for line in helps[binary].splitlines()) and "${" not in sub:
                pr.add(f"{where}: loadgen scenario {sub!r} unknown")
            i = 2
        for a in argv[i:]:
            if not a.startswith("--"):
                continue
            flag = a.split("=", 1)[0]
            if not re.search(rf"(^|[\s,]){re.escape(flag)}([\s=,<\[]|$)", helps[binary], re.M):
                pr.add(f"{where}: {binary} has no flag {flag}")
        labels = [a.split("=", 1)[1] for a in argv if a.startswith("--label=")]
        if binary == "log-shipper" and labels and "app=llm-gateway" not in labels:
            pr.add(f"{where}: --label replaces the default app=llm-gateway, which the LogQL rules select on")
        pr.ok(f"{where}: {' '.join(argv[:2])} ... ({len(argv) - 1} args)")
    return pr.finish()


def k8s_rules(rendered: str, out_dir: str) -> int:
    docs = load_all_yaml(rendered)
    pr = Problems()
    os.makedirs(out_dir, exist_ok=True)
    n_pr = 0
    for d in docs:
        if d.get("kind") == "PrometheusRule":
            n_pr += 1
            out = os.path.join(out_dir, f"{d['metadata']['name']}.yml")
            with open(out, "w", encoding="utf-8") as f:
                yaml.safe_dump({"groups": d["spec"].get("groups", [])}, f, sort_keys=False)
            print(out)
    if not n_pr:
        pr.add("no PrometheusRule in the render")
    n_loki = n_dash = 0
    for d in docs:
        if d.get("kind") != "ConfigMap":
            continue
        labels = d["metadata"].get("labels") or {}
        data = d.get("data") or {}
        if labels.get("grafana_dashboard"):
            for k, v in data.items():
                n_dash += 1
                try:
                    j = json.loads(v)
                    if not j.get("uid") or not j.get("title"):
                        pr.add(f"ConfigMap {d['metadata']['name']}/{k}: dashboard without uid/title")
                except ValueError as e:
                    pr.add(f"ConfigMap {d['metadata']['name']}/{k}: not JSON: {e}")
        elif any(k.endswith((".yaml", ".yml")) for k in data):
            for k, v in data.items():
                try:
                    doc = yaml.safe_load(v)
                except yaml.YAMLError as e:
                    pr.add(f"ConfigMap {d['metadata']['name']}/{k}: not YAML: {e}")
                    continue
                if isinstance(doc, dict) and "groups" in doc:
                    n_loki += 1
                    for g in doc["groups"]:
                        for r in g.get("rules") or []:
                            if not r.get("expr"):
                                pr.add(f"ConfigMap {d['metadata']['name']}/{k}: rule without expr")
    if not n_loki:
        pr.add("no Loki rules ConfigMap (data *.yaml with groups) in the render")
    if not n_dash:
        pr.add("no dashboard ConfigMap in the render")
    print(f"  ok: {n_pr} PrometheusRule, {n_loki} Loki rule files, {n_dash} dashboards", file=sys.stderr)
    return pr.finish()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "compose-paths" and len(args) == 1:
        return compose_paths(*args)
    if cmd == "compose-wiring" and len(args) == 5:
        return compose_wiring(*args)
    if cmd == "prom-rewrite" and len(args) == 3:
        return prom_rewrite(*args)
    if cmd == "loki-config" and len(args) == 1:
        return loki_config(*args)
    if cmd == "loki-rules" and len(args) == 1:
        return loki_rules(*args)
    if cmd == "k8s-split" and len(args) == 2:
        return k8s_split(*args)
    if cmd == "k8s-wiring" and args:
        ns, tenants = None, []
        rest = args[1:]
        while rest:
            if rest[0] == "--namespace" and len(rest) > 1:
                ns, rest = rest[1], rest[2:]
            elif rest[0] == "--tenants" and len(rest) > 1:
                tenants, rest = [t for t in rest[1].split(",") if t], rest[2:]
            else:
                print(f"unknown argument {rest[0]}")
                return 2
        return k8s_wiring(args[0], ns, tenants)
    if cmd == "cli-flags" and len(args) >= 2:
        return cli_flags(*args)
    if cmd == "k8s-rules" and len(args) == 2:
        return k8s_rules(*args)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Routing benchmark (issue 18): the pool's routing policies side by side on multi-turn chat.

    python3 bench/routing.py                 # build, then 2 rounds (~30 min on 2 cores)
    python3 bench/routing.py --rounds 1 --secs 30 --no-build
    python3 bench/routing.py --report-only bench/results/routing-policies-<date>.json

Standard library only; everything on 127.0.0.1; every window is bounded in time.

Set-up per window (fresh processes every window, so no cache or counter carries over):
- 4 vllm-sim replicas with prefix caching, a prefill lane (--prefill-tokens-per-second) and
  a bounded KV cache; replica 0 runs at --speed-factor 0.5 (half as fast);
- llm-gateway (release build) with one pool of the 4 and `routing = POLICY`;
- loadgen `sessions` through the gateway: conversations of several turns resending their
  history (shared system prompt), open loop at a fixed conversation rate, streaming; the
  hit rate and the per-replica request counts come from the replicas' /metrics.

Cases:
- `main`: round-robin, least-in-flight, load-aware, prefix-affinity;
- `skewed`: 4 replicas at full speed, replica 0 also serves a closed loop of long
  generations sent to it directly (not through the gateway) that keeps its running set full
  and its queue long; least-in-flight vs load-aware.

Rounds interleave the policies (order rotated per round); the report shows medians over
rounds. Writes bench/results/routing-policies-<date>.md and .json; raw output in bench/out/routing-<stamp>/.
"""

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import bench  # noqa: E402  (process helpers, machine description)

POLICIES = ["round-robin", "least-in-flight", "load-aware", "prefix-affinity"]
# Extra rows: prefix-affinity with a looser bound (`affinity_max_load_factor`), to show
# what the bounded load costs and buys. NAME@FACTOR.
EXTRA_POLICIES = ["prefix-affinity@2.0"]
# prefix-affinity too: its load bound counts the scraped queue, so conversations
# whose endpoint is the queued replica should move off it.
SKEW_POLICIES = ["least-in-flight", "load-aware", "prefix-affinity"]
MODEL = "sim-model"

# Replica model (see docs/benchmarks.md, "Routing"): a mid-size GPU serving an 8B model.
SIM = {
    "ttft_ms": 20,  # fixed part of the time to first token (scheduling, one step)
    "tokens_per_second": 60,  # decode speed per stream
    "prefill_tokens_per_second": 6000,  # prefill compute of the replica, shared FCFS
    "kv_cache_tokens": 32768,  # ~4 GB of KV at 128 KB/token (8B model, fp16)
    "max_concurrency": 32,
}
# Multi-turn chat where each conversation's own history is most of its prompt (the
# regime prefix-aware routing is for): a 300-token system prompt shared by all, 10 turns.
# `--system-tokens 1500 --turns 6 --rate 1.6` is the shared-prompt-heavy variant, where
# every replica caches the common prompt under any policy (see docs/benchmarks.md).
SESSIONS = {
    "rate": 1.4,  # new conversations per second (~14 turns/s over the 4 replicas)
    "turns": 10,
    "system_tokens": 300,
    "user_tokens": "50-200",
    "answer_tokens": "100-300",
    "think_ms": "500-1500",
}
SKEW_BACKGROUND = {"concurrency": 44, "output_tokens": 600}

GOAL_TTFT_DROP = 0.30
GOAL_HIT_RATIO = 2.0
GOAL_MAX_LOAD = 1.5


def log(msg):
    sys.stderr.write(f"[routing {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class Ctx:
    """What bench.Server needs: an output directory and a list of servers."""

    def __init__(self, out):
        self.out = out
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        self.servers = []

    def stop_all(self):
        for s in reversed(self.servers):
            s.stop()
        self.servers = []


def start_sims(ctx, bindir, speeds, tag):
    ports = []
    for i, speed in enumerate(speeds):
        port = bench.free_port()
        argv = [os.path.join(bindir, "vllm-sim"), "--listen", f"127.0.0.1:{port}", "--model", MODEL,
                "--ttft-ms", str(SIM["ttft_ms"]), "--tokens-per-second", str(SIM["tokens_per_second"]),
                "--prefill-tokens-per-second", str(SIM["prefill_tokens_per_second"]),
                "--kv-cache-tokens", str(SIM["kv_cache_tokens"]),
                "--max-concurrency", str(SIM["max_concurrency"]), "--speed-factor", str(speed),
                "--max-model-len", "32768"]
        srv = bench.Server(ctx, f"{tag}-sim{i}", argv)
        if not bench.wait_http(f"http://127.0.0.1:{port}/health", 20, srv.proc):
            raise RuntimeError(f"vllm-sim {i} did not start: {srv.tail()}")
        ports.append(port)
    return ports


def gateway_config(port, events, sim_ports, policy):
    eps = ", ".join(f'"http://127.0.0.1:{p}"' for p in sim_ports)
    # least-in-flight is the default: leave the key out so the config also loads on a
    # gateway without the routing policies (the script then measures what exists).
    name, _, factor = policy.partition("@")
    routing = "" if name == "least-in-flight" else f'routing = "{name}"\n'
    if factor:
        routing += f"affinity_max_load_factor = {float(factor)}\n"
    return f"""[server]
listen = "127.0.0.1:{port}"
max_concurrent_requests = 100000

[events]
output = "{events}"

[routing]
default_pool = "chat"
retries = 1

[health]
interval_ms = 5000

[pools.chat]
endpoints = [{eps}]
{routing}
[models.{MODEL}]
pool = "chat"
"""


def start_gateway(ctx, bindir, sim_ports, policy, tag):
    port = bench.free_port()
    events = os.path.join(ctx.out, f"{tag}-events.log")
    path = os.path.join(ctx.out, f"{tag}-gateway.toml")
    with open(path, "w") as f:
        f.write(gateway_config(port, events, sim_ports, policy))
    gw = bench.Server(ctx, f"{tag}-gateway", [os.path.join(bindir, "llm-gateway"), "--config", path])
    if not bench.wait_http(f"http://127.0.0.1:{port}/healthz", 20, gw.proc):
        return None, gw.tail()
    bench.wait_http(f"http://127.0.0.1:{port}/readyz", 10, gw.proc)
    return port, None


def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode(errors="replace")
    except OSError:
        return ""


def picks_by_reason(page):
    """Sum of llm_gateway_endpoint_picks_total by reason label (empty without the metric)."""
    out = {}
    for line in page.splitlines():
        if not line.startswith("llm_gateway_endpoint_picks_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        reason = "?"
        for part in labels[labels.index("{") + 1:labels.rindex("}")].split(","):
            k, _, v = part.partition("=")
            if k == "reason":
                reason = v.strip('"')
        try:
            out[reason] = out.get(reason, 0) + float(value)
        except ValueError:
            pass
    return out


def window(ctx, bindir, case, policy, rnd, secs, drain):
    tag = f"{case}-{policy}-r{rnd}"
    speeds = [0.5, 1, 1, 1] if case == "main" else [1, 1, 1, 1]
    row = {"case": case, "policy": policy, "round": rnd}
    try:
        sim_ports = start_sims(ctx, bindir, speeds, tag)
        background = None
        if case == "skewed":
            bg = SKEW_BACKGROUND
            argv = [os.path.join(bindir, "loadgen"), "latency-spike", "--target",
                    f"http://127.0.0.1:{sim_ports[0]}", "--model", MODEL,
                    "--concurrency", str(bg["concurrency"]), "--duration-secs", str(secs + drain + 30),
                    "--max-tokens", str(bg["output_tokens"]),
                    "--header", f"x-sim-output-tokens: {bg['output_tokens']}",
                    "--drain-secs", "0", "--json", "-q"]
            background = bench.Server(ctx, f"{tag}-background", argv)
            # Let the replica's running set fill and its queue form.
            time.sleep(3)
        gw_port, err = start_gateway(ctx, bindir, sim_ports, policy, tag)
        if gw_port is None:
            row["error"] = "gateway did not start (policy not available?): " + " ".join(err.split())[-300:]
            return row
        s = SESSIONS
        argv = [os.path.join(bindir, "loadgen"), "sessions", "--target", f"http://127.0.0.1:{gw_port}",
                "--model", MODEL, "--rate", str(s["rate"]), "--duration-secs", str(secs),
                "--drain-secs", str(drain), "--turns", str(s["turns"]),
                "--prompt-tokens", str(s["system_tokens"]), "--user-tokens", s["user_tokens"],
                "--answer-tokens", s["answer_tokens"], "--think-ms", s["think_ms"],
                "--timeout-secs", "120", "--json", "-q"]
        for p in sim_ports:
            argv += ["--metrics-url", f"http://127.0.0.1:{p}/metrics"]
        out_path = os.path.join(ctx.out, f"{tag}-loadgen.json")
        code, _ = bench.run_waited(argv, out_path, timeout=secs + drain + 60)
        if code != 0:
            with open(out_path + ".err", "rb") as f:
                row["error"] = f"loadgen exit {code}: {f.read().decode(errors='replace')[-400:]}"
            return row
        with open(out_path) as f:
            summary = json.load(f)
        row.update(row_from_summary(summary))
        row["picks"] = picks_by_reason(scrape(f"http://127.0.0.1:{gw_port}/metrics"))
        if background is not None:
            row["background_waiting_at_end"] = waiting(scrape(f"http://127.0.0.1:{sim_ports[0]}/metrics"))
        return row
    finally:
        ctx.stop_all()


def waiting(page):
    for line in page.splitlines():
        if line.startswith("vllm:num_requests_waiting{"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def row_from_summary(s):
    """The numbers of one window from a loadgen `sessions` JSON summary."""
    st = s.get("sessions") or {}
    ttft = s.get("ttft_ms") or {}
    lat = s.get("latency_ms") or {}
    return {
        "requests": s.get("requests"),
        "ok": s.get("ok"),
        "errors": s.get("errors"),
        "unfinished": s.get("unfinished"),
        "sessions_started": st.get("started"),
        "sessions_completed": st.get("completed"),
        "ttft_p50_ms": ttft.get("p50"),
        "ttft_p95_ms": ttft.get("p95"),
        "ttft_p99_ms": ttft.get("p99"),
        "e2e_p50_ms": lat.get("p50"),
        "e2e_p95_ms": lat.get("p95"),
        "e2e_p99_ms": lat.get("p99"),
        "hit_rate": st.get("prefix_cache_hit_rate"),
        "load_max_over_mean": st.get("load_max_over_mean"),
        "replica_requests": [r.get("requests") for r in st.get("replicas", [])],
    }


KEYS = ["ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms",
        "hit_rate", "load_max_over_mean", "requests", "errors"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rows):
    """Median over rounds per (case, policy): {case: {policy: {key: median, rounds: n}}}."""
    out = {}
    for r in rows:
        if r.get("error"):
            continue
        out.setdefault(r["case"], {}).setdefault(r["policy"], []).append(r)
    res = {}
    for case, per in out.items():
        res[case] = {}
        for pol, rs in per.items():
            m = {k: med([r.get(k) for r in rs]) for k in KEYS}
            m["rounds"] = len(rs)
            res[case][pol] = m
    return res


def evaluate(summary):
    """The issue's goals, each {ok, detail}; ok None when a side was not measured."""
    g = {}
    main = summary.get("main", {})
    pa, lif = main.get("prefix-affinity"), main.get("least-in-flight")

    def both(key):
        return pa and lif and pa.get(key) is not None and lif.get(key) is not None

    if both("ttft_p95_ms"):
        drop = 1 - pa["ttft_p95_ms"] / lif["ttft_p95_ms"] if lif["ttft_p95_ms"] else 0.0
        g["affinity_ttft_p95"] = {"ok": drop >= GOAL_TTFT_DROP,
                                  "detail": f"p95 TTFT {pa['ttft_p95_ms']:.0f} ms vs {lif['ttft_p95_ms']:.0f} ms "
                                            f"least-in-flight: {drop * 100:.1f} % lower (goal >= {GOAL_TTFT_DROP * 100:.0f} %)"}
    else:
        g["affinity_ttft_p95"] = {"ok": None, "detail": "not measured"}
    if both("hit_rate"):
        ratio = pa["hit_rate"] / lif["hit_rate"] if lif["hit_rate"] else float("inf")
        g["affinity_hit_rate"] = {"ok": ratio >= GOAL_HIT_RATIO,
                                  "detail": f"hit rate {pa['hit_rate'] * 100:.1f} % vs {lif['hit_rate'] * 100:.1f} %: "
                                            f"{ratio:.2f}x (goal >= {GOAL_HIT_RATIO:.0f}x)"}
    else:
        g["affinity_hit_rate"] = {"ok": None, "detail": "not measured"}
    if pa and pa.get("load_max_over_mean") is not None:
        l = pa["load_max_over_mean"]
        g["affinity_balance"] = {"ok": l <= GOAL_MAX_LOAD,
                                 "detail": f"busiest replica {l:.2f}x the mean (goal <= {GOAL_MAX_LOAD})"}
    else:
        g["affinity_balance"] = {"ok": None, "detail": "not measured"}
    sk = summary.get("skewed", {})
    la, sl = sk.get("load-aware"), sk.get("least-in-flight")
    if la and sl and la.get("e2e_p95_ms") is not None and sl.get("e2e_p95_ms") is not None:
        g["skewed_load_aware_e2e_p95"] = {
            "ok": la["e2e_p95_ms"] < sl["e2e_p95_ms"],
            "detail": f"p95 e2e {la['e2e_p95_ms']:.0f} ms vs {sl['e2e_p95_ms']:.0f} ms least-in-flight"}
    else:
        g["skewed_load_aware_e2e_p95"] = {"ok": None, "detail": "not measured"}
    return g


def fmt(v, nd=0, pct=False):
    if v is None:
        return "–"
    if pct:
        return f"{v * 100:.1f} %"
    return f"{v:.{nd}f}"


def verdict(ok):
    return {True: "met", False: "**missed**", None: "not measured"}[ok]


def render(res):
    s = res["summary"]
    lines = [f"# Routing benchmark {res['date']}", "",
             f"Command: `{res['command']}`. Machine: {res['machine'].get('cpu_model', '?')}, "
             f"{res['machine'].get('nproc', '?')} cores{', shared with other work' if res.get('shared') else ''}. "
             f"{res['rounds']} round(s) per policy, medians over rounds; raw windows in the JSON.", "",
             "## Goals", ""]
    for k, v in res["goals"].items():
        lines.append(f"- `{k}`: {verdict(v['ok'])} — {v['detail']}")
    def table(title, case, policies, columns):
        """One row per policy of `case`; `columns`: (header, cell of a summary)."""
        lines.extend(["", title, "", "| policy | " + " | ".join(h for h, _ in columns) + " |",
                      "|---|" + "---|" * len(columns)])
        for pol in policies:
            m = s.get(case, {}).get(pol)
            if not m:
                lines.append(f"| {pol} | not measured |" + " |" * (len(columns) - 1))
                continue
            lines.append(f"| {pol} | " + " | ".join(cell(m) for _, cell in columns) + " |")

    def ms(key):
        return lambda m: f"{fmt(m[key])} ms"

    table("## Main case: 4 replicas (replica 0 half as fast), conversations through the gateway", "main",
          POLICIES + [p for p in EXTRA_POLICIES if p in s.get("main", {})],
          [("TTFT p50", ms("ttft_p50_ms")), ("TTFT p95", ms("ttft_p95_ms")), ("TTFT p99", ms("ttft_p99_ms")),
           ("e2e p50", ms("e2e_p50_ms")), ("e2e p95", ms("e2e_p95_ms")),
           ("hit rate", lambda m: fmt(m["hit_rate"], pct=True)),
           ("max/mean load", lambda m: fmt(m["load_max_over_mean"], 2)),
           ("requests", lambda m: fmt(m["requests"])), ("errors", lambda m: fmt(m["errors"]))])
    table("## Skewed case: replica 0 has a long queue of long generations sent to it directly", "skewed",
          SKEW_POLICIES,
          [("TTFT p50", ms("ttft_p50_ms")), ("TTFT p95", ms("ttft_p95_ms")), ("e2e p50", ms("e2e_p50_ms")),
           ("e2e p95", ms("e2e_p95_ms")), ("e2e p99", ms("e2e_p99_ms")),
           ("hit rate", lambda m: fmt(m.get("hit_rate"), pct=True)),
           ("requests", lambda m: fmt(m["requests"])), ("errors", lambda m: fmt(m["errors"]))])
    lines += ["", "## Per window", "",
              "| case | policy | round | TTFT p95 | e2e p95 | hit rate | requests per replica | gateway picks by reason |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("error"):
            lines.append(f"| {r['case']} | {r['policy']} | {r['round']} | error: {r['error'][:120]} | | | | |")
            continue
        picks = ", ".join(f"{k} {int(v)}" for k, v in sorted((r.get("picks") or {}).items())) or "–"
        reps = ", ".join(fmt(x) for x in r.get("replica_requests") or [])
        lines.append(f"| {r['case']} | {r['policy']} | {r['round']} | {fmt(r['ttft_p95_ms'])} ms | "
                     f"{fmt(r['e2e_p95_ms'])} ms | {fmt(r['hit_rate'], pct=True)} | {reps} | {picks} |")
    lines += ["", "## Method", "", res["method"], ""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def method_text(secs, drain):
    s, m, b = SESSIONS, SIM, SKEW_BACKGROUND
    return (
        f"Each window starts fresh processes: 4 `vllm-sim` (`--ttft-ms {m['ttft_ms']} --tokens-per-second "
        f"{m['tokens_per_second']} --prefill-tokens-per-second {m['prefill_tokens_per_second']} "
        f"--kv-cache-tokens {m['kv_cache_tokens']} --max-concurrency {m['max_concurrency']}`, prefix caching on, "
        f"blocks of 16 tokens; main case: replica 0 `--speed-factor 0.5`), `llm-gateway` (release) with one pool "
        f"of the 4 and `routing = POLICY`, and `loadgen sessions` through the gateway: {s['rate']} new "
        f"conversations/s for {secs} s (then up to {drain} s for the conversations to finish), {s['turns']} turns "
        f"each, a {s['system_tokens']}-token system prompt shared by all, user messages of {s['user_tokens']} "
        f"tokens, answers of {s['answer_tokens']} tokens, {s['think_ms']} ms between an answer and the next turn, "
        "streaming. TTFT and e2e are per turn, from the turn's send time. The hit rate is "
        "Δ`vllm:prefix_cache_hits_total` / Δ`vllm:prefix_cache_queries_total` over the 4 replicas (before/after "
        "the window); max/mean load is the busiest replica's Δ`vllm:request_success_total` over the mean. "
        f"Skewed case: 4 full-speed replicas; replica 0 additionally serves a closed loop of {b['concurrency']} "
        f"direct requests of {b['output_tokens']} output tokens (more than its {m['max_concurrency']} running "
        "slots, so it always has a queue), started 3 s before the gateway; its requests are not seen by the "
        "gateway's in-flight counts (they do count in that replica's request numbers and hit rate). "
        "`prefix-affinity@2.0` is prefix-affinity with `affinity_max_load_factor = 2.0` (the default is 1.25). "
        "Policies are run in rotated order per round; medians over rounds."
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--secs", type=int, default=35, help="conversation arrivals per window, seconds")
    ap.add_argument("--drain", type=int, default=60, help="time for started conversations to finish")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--cases", default="main,skewed")
    ap.add_argument("--policies", default=",".join(POLICIES + EXTRA_POLICIES))
    ap.add_argument("--date", default=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))
    ap.add_argument("--note", action="append", default=[], help="a note for the report (repeatable)")
    ap.add_argument("--report-only", metavar="JSON")
    ap.add_argument("--system-tokens", type=int, default=SESSIONS["system_tokens"],
                    help="tokens of the system prompt shared by all conversations")
    ap.add_argument("--turns", type=int, default=SESSIONS["turns"], help="turns per conversation")
    ap.add_argument("--rate", type=float, default=SESSIONS["rate"], help="new conversations per second")
    ap.add_argument("--name", default="", help="suffix of the results file (a workload variant)")
    a = ap.parse_args()
    SESSIONS.update(system_tokens=a.system_tokens, turns=a.turns, rate=a.rate)
    if a.report_only:
        with open(a.report_only) as f:
            res = json.load(f)
        res["summary"] = summarize(res["rows"])
        res["goals"] = evaluate(res["summary"])
        with open(a.report_only[:-5] + ".md", "w") as f:
            f.write(render(res))
        return
    if not a.no_build:
        log("building release binaries")
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "-p", "sim"], cwd=ROOT,
                       check=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    ctx = Ctx(os.path.join(BENCH, "out", f"routing-{stamp}"))
    bindir = os.path.join(ctx.out, "bin")
    os.makedirs(bindir, exist_ok=True)
    for tool in ("loadgen", "vllm-sim", "llm-gateway"):
        shutil.copy2(os.path.join(ROOT, "target", "release", tool), os.path.join(bindir, tool))
    policies = [p for p in a.policies.split(",") if p]
    cases = [c for c in a.cases.split(",") if c]
    rows = []
    for rnd in range(a.rounds):
        for case in cases:
            pols = policies if case == "main" else [p for p in SKEW_POLICIES if p in policies]
            k = rnd % max(1, len(pols))
            for pol in pols[k:] + pols[:k]:
                log(f"round {rnd + 1}/{a.rounds} {case} {pol}")
                row = window(ctx, bindir, case, pol, rnd, a.secs, a.drain)
                rows.append(row)
                log("  " + (row.get("error") or
                            f"ttft p95 {row.get('ttft_p95_ms')} ms, e2e p95 {row.get('e2e_p95_ms')} ms, "
                            f"hit {row.get('hit_rate')}, load {row.get('load_max_over_mean')}, "
                            f"replicas {row.get('replica_requests')}, picks {row.get('picks')}"))
    summary = summarize(rows)
    res = {
        "date": a.date,
        "stamp": stamp,
        "command": "python3 bench/routing.py " + " ".join(sys.argv[1:]),
        "machine": bench.machine(),
        "shared": True,
        "rounds": a.rounds,
        "settings": {"sim": SIM, "sessions": SESSIONS, "skew_background": SKEW_BACKGROUND,
                     "secs": a.secs, "drain": a.drain},
        "rows": rows,
        "summary": summary,
        "goals": evaluate(summary),
        "method": method_text(a.secs, a.drain),
        "notes": a.note,
    }
    suffix = f"-{a.name}" if a.name else ""
    base = os.path.join(BENCH, "results", f"routing-policies-{a.date}{suffix}")
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(render(res))
    print(render(res))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Self-test of the routing benchmark's arithmetic and report (no build, no processes):

    python3 bench/test_routing.py
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing  # noqa: E402


def row(case, policy, rnd, ttft95, e2e95, hit, load, error=None):
    r = {"case": case, "policy": policy, "round": rnd, "ttft_p50_ms": ttft95 / 2, "ttft_p95_ms": ttft95,
         "ttft_p99_ms": ttft95 * 1.2, "e2e_p50_ms": e2e95 / 2, "e2e_p95_ms": e2e95, "e2e_p99_ms": e2e95 * 1.1,
         "hit_rate": hit, "load_max_over_mean": load, "requests": 100, "errors": 0,
         "replica_requests": [25, 25, 25, 25], "picks": {"affinity": 90, "affinity_fallback": 10}}
    if error:
        r = {"case": case, "policy": policy, "round": rnd, "error": error}
    return r


class Routing(unittest.TestCase):
    def test_summary_is_median_over_rounds_and_skips_errors(self):
        rows = [row("main", "least-in-flight", 0, 300, 3000, 0.40, 1.1),
                row("main", "least-in-flight", 1, 500, 3400, 0.50, 1.2),
                row("main", "least-in-flight", 2, 400, 9000, 0.45, 1.0),
                row("main", "prefix-affinity", 0, 100, 2000, 0.90, 1.3, error="gateway did not start")]
        s = routing.summarize(rows)
        m = s["main"]["least-in-flight"]
        self.assertEqual(m["ttft_p95_ms"], 400)
        self.assertEqual(m["e2e_p95_ms"], 3400)
        self.assertAlmostEqual(m["hit_rate"], 0.45)
        self.assertEqual(m["rounds"], 3)
        self.assertNotIn("prefix-affinity", s["main"])

    def test_goals(self):
        rows = [row("main", "least-in-flight", 0, 400, 3000, 0.40, 1.1),
                row("main", "prefix-affinity", 0, 250, 2500, 0.85, 1.4),
                row("skewed", "least-in-flight", 0, 300, 9000, 0.3, 2.0),
                row("skewed", "load-aware", 0, 200, 4000, 0.3, 2.0)]
        g = routing.evaluate(routing.summarize(rows))
        self.assertTrue(g["affinity_ttft_p95"]["ok"])  # 250 vs 400 ms: 37.5 % lower
        self.assertIn("37.5 % lower", g["affinity_ttft_p95"]["detail"])
        self.assertTrue(g["affinity_hit_rate"]["ok"])
        self.assertTrue(g["affinity_balance"]["ok"])
        self.assertTrue(g["skewed_load_aware_e2e_p95"]["ok"])
        rows[1] = row("main", "prefix-affinity", 0, 300, 2500, 0.70, 1.6)
        g = routing.evaluate(routing.summarize(rows))
        self.assertFalse(g["affinity_ttft_p95"]["ok"])  # 25 % lower
        self.assertFalse(g["affinity_hit_rate"]["ok"])  # 1.75x
        self.assertFalse(g["affinity_balance"]["ok"])
        g = routing.evaluate(routing.summarize(rows[:1]))
        self.assertIsNone(g["affinity_ttft_p95"]["ok"])
        self.assertIsNone(g["skewed_load_aware_e2e_p95"]["ok"])

    def test_report_renders_every_policy(self):
        rows = [row("main", p, 0, 300, 3000, 0.5, 1.2) for p in routing.POLICIES]
        rows += [row("skewed", p, 0, 300, 3000, 0.5, 1.2) for p in routing.SKEW_POLICIES]
        rows.append(row("main", "load-aware", 1, 0, 0, 0, 0, error="loadgen exit 1"))
        s = routing.summarize(rows)
        res = {"date": "2026-12-07", "command": "python3 bench/routing.py", "machine": {"cpu_model": "x", "nproc": 2},
               "shared": True, "rounds": 1, "rows": rows, "summary": s, "goals": routing.evaluate(s),
               "method": routing.method_text(40, 40), "notes": ["noisy"]}
        md = routing.render(res)
        for p in routing.POLICIES:
            self.assertIn(f"| {p} | 150 ms | 300 ms |", md)
        self.assertIn("error: loadgen exit 1", md)
        self.assertIn("affinity 90, affinity_fallback 10", md)
        self.assertIn("- noisy", md)

    def test_gateway_config_and_picks(self):
        cfg = routing.gateway_config(8080, "/tmp/e.log", [1, 2], "prefix-affinity")
        self.assertIn('endpoints = ["http://127.0.0.1:1", "http://127.0.0.1:2"]', cfg)
        self.assertIn('routing = "prefix-affinity"', cfg)
        self.assertNotIn("routing =", routing.gateway_config(8080, "/tmp/e.log", [1], "least-in-flight"))
        cfg = routing.gateway_config(8080, "/tmp/e.log", [1], "prefix-affinity@2.0")
        self.assertIn('routing = "prefix-affinity"\naffinity_max_load_factor = 2.0\n', cfg)
        page = ('llm_gateway_endpoint_picks_total{upstream="chat",endpoint="http://a",reason="affinity"} 7\n'
                'llm_gateway_endpoint_picks_total{upstream="chat",endpoint="http://b",reason="affinity"} 3\n'
                'llm_gateway_endpoint_picks_total{upstream="chat",endpoint="http://b",reason="load"} 2\n'
                'llm_gateway_requests_total{x="y"} 9\n')
        self.assertEqual(routing.picks_by_reason(page), {"affinity": 10.0, "load": 2.0})

    def test_row_from_loadgen_summary(self):
        s = {"requests": 10, "ok": 9, "errors": 1, "unfinished": 0,
             "ttft_ms": {"p50": 1, "p95": 2, "p99": 3}, "latency_ms": {"p50": 4, "p95": 5, "p99": 6},
             "sessions": {"started": 2, "completed": 1, "prefix_cache_hit_rate": 0.5, "load_max_over_mean": 1.25,
                          "replicas": [{"requests": 4}, {"requests": 6}]}}
        r = routing.row_from_summary(s)
        self.assertEqual((r["ttft_p95_ms"], r["e2e_p99_ms"], r["hit_rate"]), (2, 6, 0.5))
        self.assertEqual(r["replica_requests"], [4, 6])
        self.assertIsNone(routing.row_from_summary({})["ttft_p95_ms"])


if __name__ == "__main__":
    unittest.main()

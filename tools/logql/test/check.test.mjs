// Tests of the LogQL checker itself: it must accept the LogQL this project writes and
// reject known-broken queries. Run: npm test --prefix tools/logql
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkExpr, checkAll } from '../check.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CLI = join(here, '..', 'check.mjs');
const SEL = '{app="llm-gateway", event="response"}';

const VALID = [
  `sum by (model) (count_over_time(${SEL} | json | refusal = "true" [5m])) / (sum by (model) (count_over_time(${SEL} | json [5m])) > 0) > 0.2`,
  `quantile_over_time(0.95, ${SEL} | json | unwrap latency_ms | __error__="" [5m]) by (model) > 8000`,
  `sum by (tenant) (rate(${SEL} | json | status >= 500 [5m]))`,
  `sum(count_over_time({app="llm-gateway"}[10m])) or vector(0)`,
  `absent_over_time({app="llm-gateway", event="response"}[15m])`,
  `sum by (model) (count_over_time(${SEL} | json | finish_reason="client_disconnect" or status=499 [5m]))`,
  `${SEL} | json | level="error" | line_format "{{.model}} {{ .status }}"`,
  `sum by (model) (rate(${SEL} | json | ttft_ms > 2s [5m]))`,
  `avg_over_time(${SEL} | json | unwrap ttft_ms [5m]) by (model, tenant)`,
  `sum(rate(${SEL} | json [5m])) > bool 0`,
];

const BROKEN = [
  ['unbalanced brace', '{app="llm-gateway"'],
  ['unbalanced paren', `sum(count_over_time(${SEL}[5m])`],
  ['extra closing paren', `sum(count_over_time(${SEL}[5m])))`],
  ['unwrap without range aggregation', `${SEL} | json | unwrap latency_ms`],
  ['trailing garbage', `sum(count_over_time(${SEL}[5m])) foo`],
  ['trailing garbage after filter', `${SEL} | json | status >= 500 xyz`],
  ['missing range', `count_over_time(${SEL} | json)`],
  ['unquoted string in label filter', `${SEL} | json | refusal=true`],
  ['unwrap with count_over_time', `count_over_time(${SEL} | json | unwrap latency_ms [5m])`],
  ['sum_over_time without unwrap', `sum_over_time(${SEL} | json [5m])`],
  ['quantile without parameter', `quantile_over_time(${SEL} | json | unwrap latency_ms [5m])`],
  ['quantile out of range', `quantile_over_time(95, ${SEL} | json | unwrap latency_ms [5m])`],
  ['grouping on count_over_time', `count_over_time(${SEL}[5m]) by (model)`],
  ['grouping on sum_over_time', `sum_over_time(${SEL} | json | unwrap latency_ms [5m]) by (model)`],
  ['PromQL offset outside the range', `count_over_time(${SEL}[5m]) offset 1d`],
  ['grafana variable left in', `sum(count_over_time(${SEL}[$__auto]))`],
  ['empty', '   '],
  ['by without labels', `sum(rate(${SEL}[5m])) by`],
];

test('accepts the LogQL the project writes', () => {
  for (const q of VALID) {
    const r = checkExpr(q);
    assert.equal(r.ok, true, `${q}\n${JSON.stringify(r.error)}`);
  }
});

for (const [name, q] of BROKEN) {
  test(`rejects: ${name}`, () => {
    const r = checkExpr(q);
    assert.equal(r.ok, false, `expected failure for ${q}`);
    assert.ok(r.error && Number.isInteger(r.error.line) && Number.isInteger(r.error.col));
  });
}

test('reports the error position', () => {
  const r = checkExpr('sum(rate({app="x"}[5m])) )');
  assert.equal(r.ok, false);
  assert.equal(r.error.pos, 25);
  assert.deepEqual([r.error.line, r.error.col], [1, 26]);
  const r2 = checkExpr('sum(\n  rate({app="x"}[5m]\n)');
  assert.equal(r2.ok, false);
  assert.equal(r2.error.line, 3);
});

test('extracts stream labels, fields, grouping and extracted labels', () => {
  const r = checkExpr(
    `sum by (model) (count_over_time(${SEL} | json lat="latency_ms", refusal | label_format who=tenant | status >= 500 and finish_reason != "stop" [5m]))`
    + ` / on (model) group_left sum without (tenant) (rate({app="llm-gateway", level="error"} | json | unwrap cost_usd [5m]))`,
  );
  assert.equal(r.ok, true, JSON.stringify(r.error));
  assert.equal(r.kind, 'metric');
  assert.deepEqual(r.stream_labels, ['app', 'event', 'level']);
  assert.deepEqual(r.fields, ['cost_usd', 'finish_reason', 'latency_ms', 'refusal', 'status', 'tenant']);
  assert.deepEqual(r.grouping, ['model', 'tenant']);
  assert.deepEqual(r.extracted, ['lat', 'who']);
});

test('template references count as fields; __error__ does not', () => {
  const r = checkExpr(`${SEL} | json | __error__="" | line_format "{{ .route }} {{.status}}"`);
  assert.equal(r.ok, true);
  assert.equal(r.kind, 'log');
  assert.deepEqual(r.fields, ['route', 'status']);
});

test('allow-lists make unknown names fail', () => {
  const opts = { labels: ['app', 'event', 'model', 'tenant'], fields: ['refusal', 'latency_ms', 'model'] };
  assert.equal(checkExpr(`sum(count_over_time(${SEL} | json | refusal="true" [5m]))`, opts).ok, true);
  const bad = checkExpr(`sum(count_over_time(${SEL} | json | refusl="true" [5m]))`, opts);
  assert.equal(bad.ok, false);
  assert.deepEqual(bad.unknown_fields, ['refusl']);
  const badLabel = checkExpr('sum(count_over_time({job="gateway"}[5m]))', opts);
  assert.equal(badLabel.ok, false);
  assert.deepEqual(badLabel.unknown_labels, ['job']);
  const alias = checkExpr(`sum(count_over_time(${SEL} | json refused="refused" | refused="true" [5m]))`, opts);
  assert.equal(alias.ok, false, 'a json path outside the fields is unknown even when aliased');
  assert.deepEqual(alias.unknown_fields, ['refused']);
  assert.equal(checkExpr(`sum(count_over_time(${SEL} | json r="refusal" | r="true" [5m]))`, opts).ok, true);
  const badGroup = checkExpr(`sum by (user) (count_over_time(${SEL}[5m]))`, opts);
  assert.equal(badGroup.ok, false);
  assert.deepEqual(badGroup.unknown_fields, ['user']);
});

test('metricOnly rejects log queries', () => {
  assert.equal(checkExpr(SEL, { metricOnly: true }).ok, false);
  assert.equal(checkExpr(`count_over_time(${SEL}[1m])`, { metricOnly: true }).ok, true);
});

test('checkAll counts failures', () => {
  const out = checkAll([{ id: 'a', expr: VALID[0] }, { id: 'b', expr: BROKEN[0][1] }]);
  assert.equal(out.failed, 1);
  assert.equal(out.results[1].id, 'b');
});

test('CLI: JSON out, one FAIL line per failure, exit code', () => {
  const dir = mkdtempSync(join(tmpdir(), 'logql-check-'));
  const f = join(dir, 'q.json');
  writeFileSync(f, JSON.stringify([
    { id: 'good', expr: VALID[1] },
    { id: 'bad-brace', expr: '{app="llm-gateway"' },
    { id: 'bad-unwrap', expr: `${SEL} | json | unwrap latency_ms` },
  ]));
  const p = spawnSync(process.execPath, [CLI, f], { encoding: 'utf8' });
  assert.equal(p.status, 1, p.stderr);
  const out = JSON.parse(p.stdout);
  assert.equal(out.failed, 2);
  const lines = p.stderr.trim().split('\n');
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^FAIL bad-brace 1:\d+ /);
  assert.match(lines[1], /^FAIL bad-unwrap 1:\d+ /);

  writeFileSync(f, JSON.stringify([{ id: 'good', expr: VALID[0] }]));
  const ok = spawnSync(process.execPath, [CLI, f, '--labels', 'app,event', '--fields', 'refusal,model'], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(JSON.parse(ok.stdout).results[0].ok, true);

  const usage = spawnSync(process.execPath, [CLI], { encoding: 'utf8' });
  assert.equal(usage.status, 2);
});

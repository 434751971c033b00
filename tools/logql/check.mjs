#!/usr/bin/env node
// LogQL syntax checker for this project's Loki rules and dashboard queries.
//
// Usage:
//   node tools/logql/check.mjs FILE.json [--labels a,b,c] [--fields x,y,z] [--metric-only]
//   node tools/logql/check.mjs --expr 'QUERY' [...]
//   FILE may be `-` (stdin). FILE holds a JSON array of {"id": "...", "expr": "..."}.
//
// Parsing uses Grafana's own LogQL grammar (@grafana/lezer-logql, strict mode) for
// syntax, plus the semantic checks Loki applies that the grammar does not
// (unwrap/range-function pairing, grouping on range functions, quantile parameter).
// The lezer tree has arithmetic/comparison precedence reversed, so it is used for
// syntax and name extraction only, never for evaluation.
//
// Grafana template variables ($__auto, $__rate_interval, $__interval, $model, ...)
// are NOT LogQL: callers must substitute them (e.g. `[$__auto]` -> `[5m]`,
// `$model` -> `.*`) before checking. An expression that still contains `$` fails
// with a message saying so.
//
// Output: a JSON document on stdout:
//   {"results":[{"id","ok","kind","error","stream_labels","fields","grouping",
//                "extracted","unknown_labels","unknown_fields"}], "failed": N}
//   kind: "metric" (sample expression) or "log" (log query).
//   stream_labels: label names used in stream selectors `{a="b"}`.
//   fields: names referenced after the selector: label filters (`| f="v"`, `| f > 1`),
//           `| unwrap f`, `| json f` / `| json x="f.path"` (root of the path), sources of
//           `label_format`, `keep`/`drop` names, `{{.f}}` in line_format/label_format
//           templates. `__error__`/`__error_details__`/`__line__`/`__stream_shard__` are not listed.
//   grouping: names in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_left(...)`.
//   extracted: new label names created in the pipeline (json/logfmt aliases, label_format targets).
// With --labels, a stream label outside the list is a failure (unknown_labels).
// With --fields, a field or grouping name outside fields ∪ labels ∪ extracted is a failure
// (unknown_fields). --metric-only makes log queries fail (Loki rules must be metric queries).
// One line per failing expression is printed on stderr: `FAIL <id> <line>:<col> <message>`.
// Exit code: 0 all ok, 1 any failure, 2 usage error.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parser } from '@grafana/lezer-logql';

const strictParser = parser.configure({ strict: true });

const BUILTIN_LABELS = new Set(['__error__', '__error_details__', '__line__', '__stream_shard__', '__timestamp__']);

// Range functions that need an unwrapped sample stream (Loki: RangeAggregationExpr.validate).
const UNWRAP_OPS = new Set([
  'sum_over_time', 'avg_over_time', 'max_over_time', 'min_over_time', 'stddev_over_time',
  'stdvar_over_time', 'quantile_over_time', 'first_over_time', 'last_over_time',
]);
// Range functions over log lines; `rate` may also be unwrapped (rate of a counter field).
const LOG_OPS = new Set(['count_over_time', 'rate', 'bytes_over_time', 'bytes_rate', 'absent_over_time']);
const UNWRAP_OPTIONAL = new Set(['rate', 'absent_over_time']);
// Range functions that accept `by`/`without` (Loki's RangeAggregationExpr.validate).
const GROUPABLE_RANGE_OPS = new Set([
  'avg_over_time', 'stddev_over_time', 'stdvar_over_time', 'quantile_over_time',
  'max_over_time', 'min_over_time', 'first_over_time', 'last_over_time',
]);

function lineCol(src, pos) {
  let line = 1;
  let col = 1;
  for (let i = 0; i < pos && i < src.length; i += 1) {
    if (src[i] === '\n') { line += 1; col = 1; } else { col += 1; }
  }
  return { line, col };
}

function firstErrorPos(src) {
  let pos = null;
  parser.parse(src).iterate({
    enter(n) {
      if (pos === null && n.type.isError) pos = n.from;
      return pos === null;
    },
  });
  return pos;
}

function text(src, node) {
  return src.slice(node.from, node.to);
}

function unquote(s) {
  if (s.startsWith('`')) return s.slice(1, -1);
  try { return JSON.parse(s); } catch { return s.slice(1, -1); }
}

function childrenOf(node) {
  const out = [];
  for (let c = node.firstChild; c; c = c.nextSibling) out.push(c);
  return out;
}

function child(node, name) {
  return childrenOf(node).find((c) => c.name === name) || null;
}

function templateRefs(tpl) {
  // {{.name}}, {{ .name | ... }}, {{ if eq .status "500" }} ...
  const refs = [];
  const re = /\{\{([^}]*)\}\}/g;
  let m;
  while ((m = re.exec(tpl)) !== null) {
    const inner = m[1];
    const r2 = /(^|[^A-Za-z0-9_)\]])\.([A-Za-z_][A-Za-z0-9_]*)/g;
    let k;
    while ((k = r2.exec(inner)) !== null) refs.push(k[2]);
  }
  return refs;
}

function jsonPathRoot(path) {
  const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)/.exec(path);
  if (m) return m[1];
  const q = /^\s*\[\s*"([^"]+)"/.exec(path);
  return q ? q[1] : null;
}

/**
 * Check one LogQL expression.
 * @param {string} expr
 * @param {{labels?: string[], fields?: string[], metricOnly?: boolean}} [opts]
 */
export function checkExpr(expr, opts = {}) {
  const res = {
    ok: true,
    kind: null,
    error: null,
    stream_labels: [],
    fields: [],
    grouping: [],
    extracted: [],
    unknown_labels: [],
    unknown_fields: [],
  };
  const fail = (pos, message) => {
    if (!res.ok) return;
    res.ok = false;
    res.error = { pos, ...lineCol(expr, pos), message };
  };
  if (typeof expr !== 'string' || expr.trim() === '') {
    fail(0, 'empty expression');
    return res;
  }
  const dollar = expr.indexOf('$');
  if (dollar >= 0) {
    fail(dollar, 'unsubstituted template variable (substitute Grafana variables such as $__auto before checking)');
    return res;
  }
  let tree;
  try {
    tree = strictParser.parse(expr);
  } catch (e) {
    const m = /No parse at (\d+)/.exec(String(e.message));
    const pos = m ? Number(m[1]) : (firstErrorPos(expr) ?? 0);
    fail(pos, `syntax error near ${JSON.stringify(expr.slice(pos, pos + 20))}`);
    return res;
  }

  const labels = new Set();
  const fields = new Set();
  const grouping = new Set();
  const extracted = new Set();
  // Names read from the log line itself (`| json f`, roots of `| json x="f.path"`): they
  // must be event fields even when an alias of the same name is created.
  const sources = new Set();
  const addField = (name) => { if (name && !BUILTIN_LABELS.has(name)) fields.add(name); };

  const top = tree.topNode.firstChild; // Expr
  const body = top && top.firstChild;
  res.kind = body && body.name === 'MetricExpr' ? 'metric' : 'log';

  tree.iterate({
    enter(ref) {
      const node = ref.node;
      switch (node.name) {
        case 'Selector':
          for (const m of node.getChildren('Matchers').flatMap(function all(ms) {
            return [...ms.getChildren('Matcher'), ...ms.getChildren('Matchers').flatMap(all)];
          })) {
            const id = child(m, 'Identifier');
            if (id) labels.add(text(expr, id));
          }
          return false;
        case 'LabelFilter': {
          // Matcher, UnitFilter/NumberFilter, IpLabelFilter, or nested filters (and/or).
          return true;
        }
        case 'Matcher': {
          const id = child(node, 'Identifier');
          if (id) addField(text(expr, id));
          return false;
        }
        case 'NumberFilter':
        case 'DurationFilter':
        case 'BytesFilter':
        case 'IpLabelFilter': {
          const id = child(node, 'Identifier');
          if (id) addField(text(expr, id));
          return false;
        }
        case 'LabelExtractionExpression': {
          const id = child(node, 'Identifier');
          const str = child(node, 'String');
          if (id && str) {
            extracted.add(text(expr, id));
            const root = jsonPathRoot(unquote(text(expr, str)));
            addField(root);
            if (root) sources.add(root);
          } else if (id) {
            addField(text(expr, id));
            sources.add(text(expr, id));
          }
          return false;
        }
        case 'LabelFormatMatcher': {
          const ids = node.getChildren('Identifier');
          const str = child(node, 'String');
          if (ids[0]) extracted.add(text(expr, ids[0]));
          if (ids[1]) addField(text(expr, ids[1]));
          if (str) templateRefs(unquote(text(expr, str))).forEach(addField);
          return false;
        }
        case 'LineFormatExpr': {
          const str = child(node, 'String');
          if (str) templateRefs(unquote(text(expr, str))).forEach(addField);
          return false;
        }
        case 'DropLabel':
        case 'KeepLabel': {
          const id = child(node, 'Identifier');
          if (id) addField(text(expr, id));
          const m = child(node, 'Matcher');
          if (m) { const mid = child(m, 'Identifier'); if (mid) addField(text(expr, mid)); }
          return false;
        }
        case 'UnwrapExpr': {
          const id = child(node, 'Identifier');
          if (id) addField(text(expr, id));
          return true;
        }
        case 'Grouping':
          for (const lab of node.getChildren('Labels')) {
            const walk = (n) => {
              for (const c of childrenOf(n)) {
                if (c.name === 'Identifier') grouping.add(text(expr, c));
                else if (c.name === 'Labels') walk(c);
              }
            };
            walk(lab);
          }
          return false;
        case 'GroupingLabels': {
          const walk = (n) => {
            for (const c of childrenOf(n)) {
              if (c.name === 'LabelName') grouping.add(text(expr, c));
              else walk(c);
            }
          };
          walk(node);
          return false;
        }
        case 'RangeAggregationExpr': {
          const op = text(expr, child(node, 'RangeOp'));
          const lre = child(node, 'LogRangeExpr');
          const hasUnwrap = !!(lre && (child(lre, 'UnwrapExpr')));
          if (UNWRAP_OPS.has(op) && !hasUnwrap) {
            fail(node.from, `${op} needs an unwrapped range (| unwrap FIELD)`);
          } else if (LOG_OPS.has(op) && hasUnwrap && !UNWRAP_OPTIONAL.has(op)) {
            fail(node.from, `${op} cannot be used with | unwrap`);
          } else if (op === 'rate_counter' && !hasUnwrap) {
            fail(node.from, 'rate_counter needs | unwrap FIELD');
          }
          const num = child(node, 'Number');
          if (op === 'quantile_over_time' && !num) fail(node.from, 'quantile_over_time needs a quantile parameter');
          if (op !== 'quantile_over_time' && num) fail(num.from, `${op} takes no numeric parameter`);
          if (num && op === 'quantile_over_time') {
            const q = Number(text(expr, num));
            if (!(q >= 0 && q <= 1)) fail(num.from, 'quantile must be between 0 and 1');
          }
          if (child(node, 'Grouping') && !GROUPABLE_RANGE_OPS.has(op)) {
            fail(child(node, 'Grouping').from, `grouping is not allowed on ${op}; wrap it in sum by (...)`);
          }
          return true;
        }
        default:
          return true;
      }
    },
  });

  res.stream_labels = [...labels].sort();
  res.fields = [...fields].sort();
  res.grouping = [...grouping].sort();
  res.extracted = [...extracted].sort();

  if (res.ok && opts.metricOnly && res.kind !== 'metric') {
    fail(0, 'a log query where a metric query is required');
  }
  if (opts.labels) {
    const allowed = new Set(opts.labels);
    res.unknown_labels = res.stream_labels.filter((l) => !allowed.has(l));
    if (res.unknown_labels.length) fail(0, `unknown stream label(s): ${res.unknown_labels.join(', ')}`);
  }
  if (opts.fields) {
    const known = new Set([...opts.fields, ...(opts.labels || [])]);
    const allowed = new Set([...known, ...res.extracted]);
    res.unknown_fields = [...new Set([
      ...[...res.fields, ...res.grouping].filter((f) => !allowed.has(f)),
      ...[...sources].filter((f) => !known.has(f)),
    ])].sort();
    if (res.unknown_fields.length) fail(0, `unknown field/label name(s): ${res.unknown_fields.join(', ')}`);
  }
  return res;
}

/**
 * Check a list of {id, expr}. Returns {results, failed}.
 */
export function checkAll(items, opts = {}) {
  const results = items.map((it, i) => ({ id: it.id ?? String(i), ...checkExpr(it.expr, opts) }));
  return { results, failed: results.filter((r) => !r.ok).length };
}

function parseArgs(argv) {
  const opts = {};
  let file = null;
  let expr = null;
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      i += 1;
      return argv[i];
    };
    const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);
    if (a === '--labels') opts.labels = list(next());
    else if (a === '--fields') opts.fields = list(next());
    else if (a === '--metric-only') opts.metricOnly = true;
    else if (a === '--expr') expr = next();
    else if (a === '-h' || a === '--help') return { help: true };
    else if (file === null && (a === '-' || !a.startsWith('--'))) file = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (file === null && expr === null) throw new Error('give FILE.json, - or --expr QUERY');
  return { opts, file, expr };
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`check.mjs: ${e.message}\nusage: node check.mjs FILE.json|- [--labels a,b] [--fields x,y] [--metric-only] | --expr QUERY\n`);
    process.exit(2);
  }
  if (args.help) {
    process.stdout.write('usage: node check.mjs FILE.json|- [--labels a,b] [--fields x,y] [--metric-only] | --expr QUERY\n');
    return;
  }
  let items;
  if (args.expr !== null) {
    items = [{ id: 'expr', expr: args.expr }];
  } else {
    try {
      const raw = readFileSync(args.file === '-' ? 0 : args.file, 'utf8');
      items = JSON.parse(raw);
      if (!Array.isArray(items)) throw new Error('expected a JSON array of {"id","expr"}');
    } catch (e) {
      process.stderr.write(`check.mjs: cannot read ${args.file}: ${e.message}\n`);
      process.exit(2);
    }
  }
  const out = checkAll(items, args.opts);
  for (const r of out.results) {
    if (!r.ok) process.stderr.write(`FAIL ${r.id} ${r.error.line}:${r.error.col} ${r.error.message}\n`);
  }
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  process.exitCode = out.failed > 0 ? 1 : 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main();
}

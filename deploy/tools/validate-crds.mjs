// Validates Prometheus Operator objects against the operator's API schemas, as shipped in
// @kubernetes-models/prometheus-operator (generated from the operator's Go API types:
// required fields, types, enums, duration patterns).
//
//   node deploy/tools/validate-crds.mjs objects.json
//
// objects.json: a JSON array of Kubernetes objects (other kinds are ignored). Prints one
// line per object and exits 1 if any object is invalid or of an unknown
// monitoring.coreos.com kind. Unknown fields are not rejected: the generated schemas do
// not close their objects.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { Probe } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/Probe";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1/Probe": Probe,
};

const file = process.argv[2];
if (!file) {
  process.stderr.write("usage: validate-crds.mjs objects.json\n");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(file, "utf8"));
let bad = 0;
let seen = 0;
for (const obj of objects) {
  const apiVersion = obj?.apiVersion ?? "";
  if (!apiVersion.startsWith("monitoring.coreos.com/")) continue;
  seen += 1;
  const id = `${obj.kind}/${obj?.metadata?.name ?? "?"}`;
  const Model = MODELS[`${apiVersion}/${obj.kind}`];
  if (!Model) {
    bad += 1;
    process.stdout.write(`ERROR ${id}: no schema for ${apiVersion} ${obj.kind}\n`);
    continue;
  }
  const problems = [];
  if (!obj?.metadata?.name) problems.push("metadata.name is required");
  if (!obj.spec || typeof obj.spec !== "object") problems.push("spec is required");
  try {
    new Model(obj).validate();
  } catch (e) {
    problems.push(String(e?.message ?? e));
  }
  if (problems.length) {
    bad += 1;
    process.stdout.write(`ERROR ${id}: ${problems.join("; ")}\n`);
  } else {
    process.stdout.write(`ok    ${id}\n`);
  }
}
process.stdout.write(`${seen} monitoring.coreos.com objects, ${bad} invalid\n`);
process.exit(bad > 0 ? 1 : 0);

// Schema check of Kubernetes manifests without a cluster: every document is
// validated against the OpenAPI schema bundled in the kubernetes-models
// package. Usage: node k8s-validate.mjs FILE.yaml...
// kubernetes-models is ESM-only and ESM ignores NODE_PATH, so the packages
// are taken from MODULES_DIR (a node_modules directory), else from a
// node_modules beside this file. Exit 1 on any failure.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const modules = process.env.MODULES_DIR ||
  path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules');
const yaml = createRequire(path.join(modules, 'x.js'))('js-yaml');
// The package's files are laid out as <apiVersion>/<Kind>.js.
const load = async (spec) => import(pathToFileURL(path.join(modules, `${spec}.js`)).href);

let bad = 0;
let n = 0;
for (const f of process.argv.slice(2)) {
  for (const d of yaml.loadAll(fs.readFileSync(f, 'utf8'))) {
    if (!d) continue;
    const what = `${f}: ${d.kind} ${d.metadata && d.metadata.name}`;
    // Kustomize's own file is not a Kubernetes object.
    if (String(d.apiVersion).startsWith('kustomize.config.k8s.io/')) {
      console.log(`skip ${what}`);
      continue;
    }
    n++;
    let Model;
    try {
      // The Prometheus Operator's kinds (PodMonitor) come in their own
      // package of the same family.
      const pkg = String(d.apiVersion).startsWith('monitoring.coreos.com/')
        ? '@kubernetes-models/prometheus-operator' : 'kubernetes-models';
      Model = (await load(`${pkg}/${d.apiVersion}/${d.kind}`))[d.kind];
    } catch (e) {
      console.log(`FAIL ${what}: unknown ${d.apiVersion}/${d.kind}`);
      bad++;
      continue;
    }
    try {
      new Model(d).validate();
      console.log(`ok   ${what}`);
    } catch (e) {
      console.log(`FAIL ${what}: ${e.message}`);
      bad++;
    }
  }
}
console.log(`${n - bad} valid, ${bad} invalid`);
process.exit(bad || n === 0 ? 1 : 0);

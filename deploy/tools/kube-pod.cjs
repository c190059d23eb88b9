// Turns deploy/k8s (ConfigMap + StatefulSet) into what `podman kube play`
// can run on one host, changing only what must change there:
//  - a Pod from the StatefulSet's pod template (podman has no StatefulSet);
//  - hostNetwork, with the broker bound to free loopback ports given as
//    flags (containerPorts are refused with hostNetwork, so they go);
//  - the volumeClaimTemplate becomes a claim podman makes a volume of;
//  - the image is the one just built, never pulled;
//  - what the kubelet adds and podman does not: unless the pod spec says
//    enableServiceLinks: false, the service-link variables of every Service
//    in service.yaml (SNAPBUS_SERVICE_HOST, SNAPBUS_PORT_7701_TCP, ...), so
//    the broker meets the environment a cluster gives it.
// Everything else (ConfigMap mount, read-only root, user, resources,
// securityContext, probes, preStop, grace period) is kept as written.
// Usage: node kube-pod.cjs K8S_DIR IMAGE INGEST PUB QUERY METRICS > pod.yaml
'use strict';
const fs = require('fs');
const path = require('path');
const yaml = require('js-yaml');

const [dir, image, pIngest, pPub, pQuery, pMetrics] = process.argv.slice(2);
const docs = [];
for (const f of ['configmap.yaml', 'statefulset.yaml', 'service.yaml']) {
  for (const d of yaml.loadAll(fs.readFileSync(path.join(dir, f), 'utf8'))) {
    if (d) docs.push(d);
  }
}
const cm = docs.find((d) => d.kind === 'ConfigMap');
const sts = docs.find((d) => d.kind === 'StatefulSet');
if (!cm || !sts) throw new Error('need a ConfigMap and a StatefulSet');

const spec = JSON.parse(JSON.stringify(sts.spec.template.spec));
// The kubelet's service links (as in kubelet's envvars.FromServices): for a
// Service "snapbus" with port 7701, SNAPBUS_SERVICE_HOST, _SERVICE_PORT,
// _SERVICE_PORT_<NAME>, _PORT, _PORT_7701_TCP and its _PROTO/_PORT/_ADDR.
const links = [];
if (spec.enableServiceLinks !== false) {
  for (const svc of docs.filter((d) => d.kind === 'Service')) {
    if (svc.spec.clusterIP === 'None') continue;
    const n = svc.metadata.name.toUpperCase().replace(/-/g, '_');
    const ip = '10.96.0.10';
    const ports = svc.spec.ports || [];
    const env = { [`${n}_SERVICE_HOST`]: ip };
    ports.forEach((p, i) => {
      const proto = (p.protocol || 'TCP');
      if (i === 0) {
        env[`${n}_SERVICE_PORT`] = String(p.port);
        env[`${n}_PORT`] = `${proto.toLowerCase()}://${ip}:${p.port}`;
      }
      if (p.name) env[`${n}_SERVICE_PORT_${p.name.toUpperCase().replace(/-/g, '_')}`] = String(p.port);
      const k = `${n}_PORT_${p.port}_${proto}`;
      env[k] = `${proto.toLowerCase()}://${ip}:${p.port}`;
      env[`${k}_PROTO`] = proto.toLowerCase();
      env[`${k}_PORT`] = String(p.port);
      env[`${k}_ADDR`] = ip;
    });
    for (const [name, value] of Object.entries(env)) links.push({ name, value });
  }
}
spec.hostNetwork = true;
spec.restartPolicy = 'Never';
const c = spec.containers[0];
c.image = image;
c.imagePullPolicy = 'Never';
delete c.ports;
if (links.length) c.env = (c.env || []).concat(links);
c.args = (c.args || []).concat([
  '--ingest', `tcp://127.0.0.1:${pIngest}`,
  '--pub', `tcp://127.0.0.1:${pPub}`,
  '--query', `tcp://127.0.0.1:${pQuery}`,
  '--metrics', `127.0.0.1:${pMetrics}`,
]);
// Probes name the container port, which is gone: point them at the number.
for (const p of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
  if (c[p] && c[p].httpGet) c[p].httpGet.port = Number(pMetrics);
}
for (const t of sts.spec.volumeClaimTemplates || []) {
  spec.volumes.push({
    name: t.metadata.name,
    persistentVolumeClaim: { claimName: `${sts.metadata.name}-${t.metadata.name}-0` },
  });
}
const pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: `${sts.metadata.name}-0`, labels: sts.spec.template.metadata.labels },
  spec,
};
process.stdout.write(yaml.dump(cm) + '---\n' + yaml.dump(pod));

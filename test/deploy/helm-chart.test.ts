/**
 * deploy/helm/meshtrain, rendered as `helm template` would (test/support/helm-render.ts: Helm's engine, built from
 * Debian's Go packages) with each values file under its ci/ folder, as chart-testing renders them. Every object is
 * checked against the Kubernetes API schema of its kind (kubernetes-models; ServiceMonitor by
 * @kubernetes-models/prometheus-operator), every container's command line against the program's own option
 * declarations, and the wiring that a schema cannot see: selectors that meet their pods, the token only ever
 * reaching a container through the Secret, GPU pools, NetworkPolicies, the HPA's metric, TLS, the security context.
 * The values themselves (schema errors, NOTES.txt) are helm-values.test.ts's.
 *   npx tsx --test test/deploy/helm-chart.test.ts
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { Secret, Service } from 'kubernetes-models/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { parseCommandLine, type OptionSet, type Specs } from '../../common/options.ts';
import { COORDINATOR_OPTIONS } from '../../coordinator/config.ts';
import { AGENT_OPTIONS } from '../../node-agent/options.ts';
import { SERVE_OPTIONS } from '../../gateway/options.ts';
import { createGatewayMetrics } from '../../gateway/metrics.ts';
import { CHART, render, rendererBinary, type K8sObject } from '../support/helm-render.ts';
import { unknownFields } from '../support/k8s-fields.ts';

/** The API schema of each kind the chart may render; a kind not listed here fails the test. */
const MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** Each program's option declarations, by the script a container runs. */
const PROGRAMS: Record<string, { subcommand: string; options: OptionSet<Specs> }> = {
  'bin/coordinator.js': { subcommand: 'start', options: COORDINATOR_OPTIONS as unknown as OptionSet<Specs> },
  'bin/node-agent.js': { subcommand: 'join', options: AGENT_OPTIONS as unknown as OptionSet<Specs> },
  'bin/gateway.js': { subcommand: 'serve', options: SERVE_OPTIONS as unknown as OptionSet<Specs> },
};

const CI_DIR = join(CHART, 'ci');
const CI_FILES = readdirSync(CI_DIR).filter((f) => f.endsWith('.yaml')).sort();

/** Each ci/*.yaml's objects and its values, rendered once for every test below. */
const rendered = new Map<string, { objects: K8sObject[]; values: any }>();

before(() => {
  rendererBinary(); // the one Go build, if this main.go has not been built here before
  for (const file of CI_FILES) {
    const r = render(['-f', join(CI_DIR, file), '--namespace', 'ml']);
    assert.equal(r.status, 0, `${file}:\n${r.stderr}`);
    rendered.set(file, { objects: r.objects, values: parse(readFileSync(join(CI_DIR, file), 'utf8')) });
  }
});

const objectsOf = (file: string) => rendered.get(file)!.objects;
const ofKind = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind);
const workloads = (objects: K8sObject[]) => objects.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet');
const podLabels = (w: K8sObject): Record<string, string> => w.spec.template.metadata.labels;
const containersOf = (w: K8sObject): any[] => w.spec.template.spec.containers;
const component = (o: K8sObject) => o.metadata.labels?.['app.kubernetes.io/component'];
const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);
const byComponent = (objects: K8sObject[], kind: string, name: string) => {
  const found = ofKind(objects, kind).filter((o) => component(o) === name);
  assert.equal(found.length, 1, `one ${kind} of component ${name}`);
  return found[0]!;
};

test('the chart renders with every ci/*.yaml values file, and the list covers CPU, GPU, TLS, ServiceMonitor and no NetworkPolicy', () => {
  assert.deepEqual(CI_FILES, ['cpu-values.yaml', 'gpu-values.yaml', 'no-networkpolicy-values.yaml', 'servicemonitor-values.yaml', 'tls-values.yaml']);
  for (const file of CI_FILES) assert.ok(objectsOf(file).length >= 8, `${file} rendered ${objectsOf(file).length} objects`);
});

test('every rendered object validates against the Kubernetes API schema of its kind', () => {
  for (const [file, { objects }] of rendered) {
    for (const o of objects) {
      const Model = MODELS[`${o.apiVersion}/${o.kind}`];
      assert.ok(Model, `${file}: ${o.source} renders ${o.apiVersion} ${o.kind}, which the test has no schema for`);
      const { source, ...object } = o;
      assert.doesNotThrow(() => new Model(object).validate(), `${file}: ${source}: ${o.kind} ${o.metadata.name}`);
      assert.ok(o.metadata.name.length <= 63 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(o.metadata.name), `${o.metadata.name}: a DNS label`);
      for (const label of ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/version', 'app.kubernetes.io/managed-by', 'helm.sh/chart']) {
        assert.ok(o.metadata.labels?.[label], `${file}: ${o.kind} ${o.metadata.name} has no ${label} label`);
      }
    }
  }
});

test('no rendered object has a field its kind does not define, as kubectl --validate=strict would refuse', () => {
  for (const [file, { objects }] of rendered) {
    for (const { source, ...object } of objects) assert.deepEqual(unknownFields(object), [], `${file}: ${source}: ${object.kind} ${object.metadata.name}`);
  }
  // The check itself: a toleration indented into the container, and a typo in the pod spec, are both named.
  const deployment = structuredClone(ofKind(objectsOf('gpu-values.yaml'), 'Deployment')[0]!) as any;
  delete deployment.source;
  deployment.spec.template.spec.containers[0].tolerations = [];
  deployment.spec.template.spec.nodeSelectr = {};
  assert.deepEqual(unknownFields(deployment), ['Deployment.spec.template.spec.containers[0].tolerations', 'Deployment.spec.template.spec.nodeSelectr']);
});

test('every container runs one of the three programs with a command line its option declarations accept', () => {
  for (const [file, { objects }] of rendered) {
    for (const w of workloads(objects)) {
      for (const c of containersOf(w)) {
        assert.equal(c.command, undefined, 'the image entry point (tini) stays: the program goes in args');
        const [node, script, subcommand, ...rest] = c.args as string[];
        const program = PROGRAMS[script!];
        assert.ok(node === 'node' && program, `${file}: ${w.metadata.name} runs ${c.args.join(' ')}`);
        assert.equal(subcommand, program.subcommand);
        // Kubernetes expands $(VAR) from the container's env before the program sees it.
        const args = rest.map((a) => a.replace(/\$\((\w+)\)/g, (_, v: string) => (c.env.some((e: any) => e.name === v) ? '10.0.0.7' : `$(${v})`)));
        const { values, positionals } = parseCommandLine(script!, args, [program.options], () => {});
        assert.doesNotThrow(() => program.options.fromArgs(values, {}), `${file}: ${w.metadata.name}: ${args.join(' ')}`);
        assert.equal(positionals.length, script === 'bin/node-agent.js' ? 1 : 0, `${file}: ${args.join(' ')}`);
      }
    }
  }
});

describe('the token and the gateway keys', () => {
  test('reach a container only through the Secret (env secretKeyRef), never in args, command or a plain env value', () => {
    for (const [file, { objects, values }] of rendered) {
      const secret = ofKind(objects, 'Secret')[0];
      const secretName = values.auth?.existingSecret || secret?.metadata.name;
      assert.ok(secretName, `${file}: a Secret, made by the chart or named in auth.existingSecret`);
      const token = values.auth?.token ?? (secret ? Buffer.from(secret.data!.token!, 'base64').toString() : undefined);
      if (values.auth?.token) assert.equal(Buffer.from(secret!.data!.token!, 'base64').toString(), values.auth.token);
      for (const w of workloads(objects)) {
        for (const c of containersOf(w)) {
          const line = JSON.stringify([c.command ?? [], c.args ?? []]);
          if (token) assert.ok(!line.includes(token), `${file}: ${w.metadata.name}'s command line holds the token`);
          assert.doesNotMatch(line, /--token|--api-key|--admin-key/, `${file}: ${w.metadata.name} passes a credential flag`);
          const env = new Map<string, any>(c.env.map((e: any) => [e.name, e]));
          assert.deepEqual(env.get('MESHTRAIN_TOKEN')?.valueFrom, { secretKeyRef: { name: secretName, key: 'token' } }, `${file}: ${w.metadata.name}`);
          for (const e of env.values()) if (token) assert.notEqual(e.value, token, `${file}: ${w.metadata.name} env ${e.name}`);
        }
      }
    }
  });

  test('the gateway reads its API and admin keys from the Secret when they are switched on', () => {
    const { objects } = rendered.get('tls-values.yaml')!;
    const env = containersOf(byComponent(objects, 'Deployment', 'gateway'))[0].env as any[];
    const ref = (name: string) => env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
    assert.deepEqual(ref('MESHTRAIN_GATEWAY_API_KEY'), { name: 'meshtrain-credentials', key: 'gateway-api-keys' });
    assert.deepEqual(ref('MESHTRAIN_GATEWAY_ADMIN_KEY'), { name: 'meshtrain-credentials', key: 'gateway-admin-key' });
    assert.equal(ofKind(objects, 'Secret').length, 0, 'auth.existingSecret: the chart makes no Secret of its own');
  });
});

test('a GPU pool limits nvidia.com/gpu, selects GPU nodes and tolerates their taint; CPU pools ask for no GPU', () => {
  const { objects, values } = rendered.get('gpu-values.yaml')!;
  const pools = values.agents.pools as any[];
  const agents = ofKind(objects, 'Deployment').filter((d) => component(d) === 'agent');
  assert.equal(agents.length, pools.length);
  for (const pool of pools) {
    const d = agents.find((a) => podLabels(a)['meshtrain/pool'] === pool.name)!;
    assert.ok(d, `a Deployment for pool ${pool.name}`);
    assert.equal(d.spec.replicas, pool.replicas);
    const spec = d.spec.template.spec;
    const agent = spec.containers[0];
    if (pool.gpus) {
      assert.equal(agent.resources.limits['nvidia.com/gpu'], pool.gpus, pool.name);
      assert.deepEqual(spec.nodeSelector, pool.nodeSelector);
      assert.ok(spec.tolerations.some((t: any) => t.key === 'nvidia.com/gpu' && t.effect === 'NoSchedule'), pool.name);
      assert.equal(agent.args[agent.args.indexOf('--backend') + 1], pool.backend);
    } else {
      assert.equal(agent.resources?.limits?.['nvidia.com/gpu'], undefined, pool.name);
      assert.equal(spec.tolerations, undefined, pool.name);
    }
  }
  const a100 = agents.find((a) => podLabels(a)['meshtrain/pool'] === 'a100')!;
  assert.deepEqual(containersOf(a100)[0].resources, { requests: { cpu: '4', memory: '16Gi' }, limits: { memory: '32Gi', 'nvidia.com/gpu': 1 } }, 'the pool\'s own limits are kept beside the GPU');
});

test('agents leave cleanly: a grace period of at least a minute, advertising their pod IP on the peer port', () => {
  for (const [file, { objects }] of rendered) {
    for (const d of ofKind(objects, 'Deployment').filter((o) => component(o) === 'agent')) {
      const spec = d.spec.template.spec;
      assert.ok(spec.terminationGracePeriodSeconds >= 60, `${file}: ${d.metadata.name}`);
      const c = spec.containers[0];
      assert.equal(c.args[c.args.indexOf('--peer-host') + 1], '$(POD_IP)');
      assert.deepEqual(c.env.find((e: any) => e.name === 'POD_IP').valueFrom, { fieldRef: { fieldPath: 'status.podIP' } });
      const peerPort = Number(c.args[c.args.indexOf('--peer-port') + 1]);
      assert.deepEqual(c.ports, [{ name: 'peer', containerPort: peerPort, protocol: 'TCP' }]);
    }
  }
});

test('each PodDisruptionBudget selects exactly the pods of the agent pool of its name', () => {
  for (const [file, { objects }] of rendered) {
    const pdbs = ofKind(objects, 'PodDisruptionBudget');
    const agents = ofKind(objects, 'Deployment').filter((o) => component(o) === 'agent');
    assert.equal(pdbs.length, agents.length, file);
    for (const pdb of pdbs) {
      const selected = workloads(objects).filter((w) => matches(pdb.spec.selector.matchLabels, podLabels(w)));
      assert.deepEqual(selected.map((w) => w.metadata.name), [pdb.metadata.name], `${file}: PDB ${pdb.metadata.name}`);
    }
  }
});

test('every workload\'s selector matches its own pod template, and every Service selects pods that have its target ports', () => {
  for (const [file, { objects }] of rendered) {
    for (const w of workloads(objects)) assert.ok(matches(w.spec.selector.matchLabels, podLabels(w)), `${file}: ${w.metadata.name}`);
    for (const svc of ofKind(objects, 'Service')) {
      const pods = workloads(objects).filter((w) => matches(svc.spec.selector, podLabels(w)));
      assert.ok(pods.length > 0, `${file}: Service ${svc.metadata.name} selects no pods`);
      for (const port of svc.spec.ports) {
        for (const w of pods) {
          const named = containersOf(w).flatMap((c) => c.ports ?? []).map((p: any) => p.name);
          assert.ok(named.includes(port.targetPort), `${file}: Service ${svc.metadata.name} targets port ${port.targetPort}, which ${w.metadata.name} lacks`);
        }
      }
    }
  }
});

describe('NetworkPolicies', () => {
  test('only agents (and the outside agents and metrics scrapers named in values) reach the agents\' peer port', () => {
    for (const file of ['cpu-values.yaml', 'gpu-values.yaml', 'servicemonitor-values.yaml']) {
      const { objects, values } = rendered.get(file)!;
      const policy = byComponent(objects, 'NetworkPolicy', 'agent');
      const agents = workloads(objects).filter((w) => component(w) === 'agent');
      const selected = workloads(objects).filter((w) => matches(policy.spec.podSelector.matchLabels, podLabels(w)));
      assert.deepEqual(selected, agents, `${file}: the agents' policy selects every agent pool and nothing else`);
      assert.equal(policy.spec.ingress.length, 1);
      const [rule] = policy.spec.ingress;
      assert.deepEqual(rule.ports, [{ port: 'peer', protocol: 'TCP' }]);
      const [fromAgents, ...others] = rule.from;
      for (const w of workloads(objects)) assert.equal(matches(fromAgents.podSelector.matchLabels, podLabels(w)), component(w) === 'agent', `${file}: ${w.metadata.name}`);
      assert.deepEqual(others, [...(values.networkPolicy?.agentPeersFrom ?? []), ...(values.networkPolicy?.metricsFrom ?? [])]);
    }
  });

  test('the coordinator\'s port is open to agents and the gateway in-cluster, and to everyone once its Service is exposed', () => {
    const inCluster = byComponent(objectsOf('cpu-values.yaml'), 'NetworkPolicy', 'coordinator').spec.ingress[0];
    const allowed = workloads(objectsOf('cpu-values.yaml')).filter((w) => inCluster.from.some((f: any) => f.podSelector && matches(f.podSelector.matchLabels, podLabels(w))));
    assert.deepEqual(allowed.map(component).sort(), ['agent', 'gateway']);
    const exposed = byComponent(objectsOf('tls-values.yaml'), 'NetworkPolicy', 'coordinator').spec.ingress[0];
    assert.equal(exposed.from, undefined, 'a LoadBalancer coordinator takes agents from outside the cluster');
  });

  test('are not rendered when networkPolicy.enabled is false', () => {
    assert.equal(ofKind(objectsOf('no-networkpolicy-values.yaml'), 'NetworkPolicy').length, 0);
    const svc = ofKind(objectsOf('no-networkpolicy-values.yaml'), 'Service').find((s) => s.spec.type === 'NodePort')!;
    assert.equal(svc.spec.ports[0].nodePort, 30770);
  });
});

test('the HPA scales the gateway Deployment on the queue-depth gauge the gateway exports', () => {
  const objects = objectsOf('gpu-values.yaml');
  const [hpa] = ofKind(objects, 'HorizontalPodAutoscaler');
  const gateway = byComponent(objects, 'Deployment', 'gateway');
  assert.deepEqual(hpa!.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: gateway.metadata.name });
  assert.equal(gateway.spec.replicas, undefined, 'the HPA owns the replica count');
  assert.equal(hpa!.spec.maxReplicas, 6);
  const [metric] = hpa!.spec.metrics;
  assert.equal(metric.type, 'Pods');
  const metrics = createGatewayMetrics();
  assert.equal(metrics.registry.getSingleMetric(metric.pods.metric.name), metrics.queueDepth, `${metric.pods.metric.name} is the gateway's queue depth`);
  assert.equal(ofKind(objectsOf('cpu-values.yaml'), 'HorizontalPodAutoscaler').length, 0, 'off by default');
});

test('the gateway serves models from the coordinator\'s Service, waits for them, and is ready on /readyz, live on /healthz', () => {
  const objects = objectsOf('gpu-values.yaml');
  const c = containersOf(byComponent(objects, 'Deployment', 'gateway'))[0];
  const coordinator = ofKind(objects, 'Service').find((s) => component(s) === 'coordinator' && s.spec.clusterIP !== 'None')!;
  assert.equal(c.args[c.args.indexOf('--registry') + 1], `http://${coordinator.metadata.name}.ml.svc:${coordinator.spec.ports[0].port}`);
  assert.equal(c.args[c.args.indexOf('--model') + 1], 'chat@v3');
  assert.ok(c.args.includes('--wait-for-models'), 'a gateway started before any model exists waits instead of restarting');
  assert.deepEqual(c.readinessProbe.httpGet, { path: '/readyz', port: 'http', scheme: 'HTTP' });
  for (const probe of ['startupProbe', 'livenessProbe']) assert.deepEqual(c[probe].httpGet, { path: '/healthz', port: 'http', scheme: 'HTTP' });
});

test('the coordinator is one StatefulSet pod with its data on a claim sized and classed from values', () => {
  const r = render(['--set', 'coordinator.persistence.storageClass=fast-ssd,coordinator.persistence.size=200Gi']);
  assert.equal(r.status, 0, r.stderr);
  const [sts] = ofKind(r.objects, 'StatefulSet');
  assert.equal(sts!.spec.replicas, 1);
  const [claim] = sts!.spec.volumeClaimTemplates;
  assert.equal(claim.spec.storageClassName, 'fast-ssd');
  assert.equal(claim.spec.resources.requests.storage, '200Gi');
  const c = containersOf(sts!)[0];
  assert.ok(c.volumeMounts.some((m: any) => m.name === claim.metadata.name && m.mountPath === c.args[c.args.indexOf('--data') + 1]));
  assert.ok(ofKind(r.objects, 'Service').some((s) => s.metadata.name === sts!.spec.serviceName && s.spec.clusterIP === 'None'));
});

test('TLS: the coordinator and gateway serve the mounted certificate, agents trust its CA, URLs and probes use https', () => {
  const objects = objectsOf('tls-values.yaml');
  const flag = (c: any, name: string) => (c.args.includes(name) ? c.args[c.args.indexOf(name) + 1] : undefined);
  for (const w of workloads(objects)) {
    const c = containersOf(w)[0];
    const volume = w.spec.template.spec.volumes.find((v: any) => v.name === 'tls');
    assert.equal(volume.secret.secretName, 'meshtrain-tls');
    const dir = c.volumeMounts.find((m: any) => m.name === 'tls').mountPath;
    if (component(w) === 'coordinator') { // no --ca flag: Node's own variable, for its calls to https:// gateways
      assert.equal(flag(c, '--ca'), undefined);
      assert.equal(c.env.find((e: any) => e.name === 'NODE_EXTRA_CA_CERTS').value, `${dir}/ca.crt`);
    } else assert.equal(flag(c, '--ca'), `${dir}/ca.crt`, w.metadata.name);
    const serves = component(w) !== 'agent'; // agents' peer listeners stay plain unless tls.agentPeers
    assert.equal(flag(c, '--tls-cert'), serves ? `${dir}/tls.crt` : undefined, w.metadata.name);
    assert.equal(flag(c, '--tls-key'), serves ? `${dir}/tls.key` : undefined, w.metadata.name);
    assert.equal(c.readinessProbe.httpGet.scheme, serves ? 'HTTPS' : 'HTTP', w.metadata.name);
  }
  const agent = containersOf(ofKind(objects, 'Deployment').find((d) => component(d) === 'agent')!)[0];
  assert.match(agent.args[3], /^https:\/\/meshtrain-coordinator\.ml\.svc:7070$/);
  assert.equal(flag(containersOf(byComponent(objects, 'Deployment', 'gateway'))[0], '--registry'), agent.args[3]);
});

test('every pod runs as non-root with the runtime\'s seccomp profile; every container drops ALL and cannot escalate', () => {
  for (const [file, { objects }] of rendered) {
    for (const w of workloads(objects)) {
      const pod = w.spec.template.spec;
      assert.equal(pod.securityContext.runAsNonRoot, true, `${file}: ${w.metadata.name}`);
      assert.equal(pod.securityContext.runAsUser, 10001);
      assert.deepEqual(pod.securityContext.seccompProfile, { type: 'RuntimeDefault' });
      for (const c of pod.containers) {
        assert.deepEqual(c.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } }, `${file}: ${w.metadata.name}`);
        assert.ok(c.volumeMounts.some((m: any) => m.mountPath === '/tmp'), 'a writable /tmp beside the read-only root');
      }
    }
  }
});

test('ServiceMonitors scrape /metrics of the coordinator, the agents and the gateway, each through one Service', () => {
  const objects = objectsOf('servicemonitor-values.yaml');
  const monitors = ofKind(objects, 'ServiceMonitor');
  assert.deepEqual(monitors.map(component).sort(), ['agent', 'coordinator', 'gateway']);
  for (const sm of monitors) {
    assert.equal(sm.metadata.labels!.release, 'kube-prometheus-stack');
    // The selector as Kubernetes applies it: its labels, and its expressions (only DoesNotExist is used).
    const expressions: Array<{ key: string; operator: string }> = sm.spec.selector.matchExpressions ?? [];
    assert.ok(expressions.every((e) => e.operator === 'DoesNotExist'), 'the test applies DoesNotExist only');
    const services = ofKind(objects, 'Service').filter((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels!) && expressions.every((e) => !(e.key in s.metadata.labels!)));
    assert.equal(services.length, 1, `${sm.metadata.name} selects one Service`);
    assert.deepEqual(sm.spec.endpoints.map((e: any) => [e.port, e.path, e.interval]), [[services[0]!.spec.ports[0].name, '/metrics', '15s']]);
  }
  for (const w of workloads(objects)) assert.equal(w.spec.template.metadata.annotations?.['prometheus.io/scrape'], undefined, 'pod annotations off');
  assert.equal(ofKind(objectsOf('cpu-values.yaml'), 'ServiceMonitor').length, 0, 'off by default');
  const coordinatorPod = byComponent(objectsOf('cpu-values.yaml'), 'StatefulSet', 'coordinator').spec.template.metadata.annotations;
  assert.equal(coordinatorPod['prometheus.io/port'], '7070');
});

/**
 * Unknown fields in Kubernetes objects, as `kubectl apply --validate=strict` reports them: a key its kind's API type
 * does not define, usually a key indented under the wrong parent in a template. kubernetes-models' validate() checks
 * types and required fields but lets unknown keys through (the OpenAPI schemas do not forbid them), so this walks
 * each object against the TypeScript interfaces the same package ships (IDeployment, IServiceMonitor, …), read with
 * the TypeScript compiler's type checker: their properties are the API's fields.
 */
import ts from 'typescript';
import { join } from 'node:path';
import { ROOT } from './helm-render.ts';

/** apiVersion/kind → the module and interface that type it. */
export const FIELD_TYPES: Record<string, [module: string, name: string]> = {
  'v1/Secret': ['kubernetes-models/v1/Secret', 'ISecret'],
  'v1/Service': ['kubernetes-models/v1/Service', 'IService'],
  'apps/v1/Deployment': ['kubernetes-models/apps/v1/Deployment', 'IDeployment'],
  'apps/v1/StatefulSet': ['kubernetes-models/apps/v1/StatefulSet', 'IStatefulSet'],
  'policy/v1/PodDisruptionBudget': ['kubernetes-models/policy/v1/PodDisruptionBudget', 'IPodDisruptionBudget'],
  'autoscaling/v2/HorizontalPodAutoscaler': ['kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler', 'IHorizontalPodAutoscaler'],
  'networking.k8s.io/v1/NetworkPolicy': ['kubernetes-models/networking.k8s.io/v1/NetworkPolicy', 'INetworkPolicy'],
  'monitoring.coreos.com/v1/ServiceMonitor': ['@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor', 'IServiceMonitor'],
};

let loaded: { checker: ts.TypeChecker; types: Map<string, ts.Type> } | undefined;

/** One program over a virtual file that imports every interface above (parsed once: ~1 s). */
function load(): NonNullable<typeof loaded> {
  if (loaded) return loaded;
  const virtual = join(ROOT, 'test', 'support', '__k8s-field-types__.ts');
  const keys = Object.keys(FIELD_TYPES);
  const source = keys.map((k, i) => `import type { ${FIELD_TYPES[k]![1]} as T${i} } from '${FIELD_TYPES[k]![0]}';\nexport type K${i} = T${i};`).join('\n');
  const options: ts.CompilerOptions = { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, strict: true, noEmit: true, skipLibCheck: true, types: [] };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (file, lang, ...rest) => (file === virtual ? ts.createSourceFile(file, source, lang) : getSourceFile.call(host, file, lang, ...rest));
  host.fileExists = (file) => file === virtual || fileExists.call(host, file);
  host.readFile = (file) => (file === virtual ? source : readFile.call(host, file));
  const program = ts.createProgram([virtual], options, host);
  const checker = program.getTypeChecker();
  const types = new Map<string, ts.Type>();
  const aliases = program.getSourceFile(virtual)!.statements.filter(ts.isTypeAliasDeclaration);
  aliases.forEach((alias, i) => {
    const type = checker.getDeclaredTypeOfSymbol(checker.getSymbolAtLocation(alias.name)!);
    if (type.flags & ts.TypeFlags.Any) throw new Error(`cannot resolve ${FIELD_TYPES[keys[i]!]!.join(' ')}`);
    types.set(keys[i]!, type);
  });
  loaded = { checker, types };
  return loaded;
}

/** The paths of the fields in `object` that its kind does not define (empty when every key is known). */
export function unknownFields(object: { apiVersion: string; kind: string }): string[] {
  const { checker, types } = load();
  const type = types.get(`${object.apiVersion}/${object.kind}`);
  if (!type) return [`${object.apiVersion} ${object.kind}: no type known for this kind`];
  const problems: string[] = [];
  walk(checker, object, type, object.kind, problems);
  return problems;
}

function walk(checker: ts.TypeChecker, value: unknown, declared: ts.Type, path: string, problems: string[]): void {
  if (value === null || typeof value !== 'object') return;
  const type = checker.getNonNullableType(declared);
  if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
  if (type.isUnion()) {
    // IntOrString and the like: an object value can only be one of the object members; any that fits will do.
    const tries = type.types.filter((t) => t.flags & ts.TypeFlags.Object).map((t) => {
      const found: string[] = [];
      walk(checker, value, t, path, found);
      return found;
    });
    if (tries.length > 0 && tries.every((found) => found.length > 0)) problems.push(...tries[0]!);
    return;
  }
  if (Array.isArray(value)) {
    const element = checker.getIndexTypeOfType(type, ts.IndexKind.Number);
    if (element) value.forEach((v, i) => walk(checker, v, element, `${path}[${i}]`, problems));
    return;
  }
  const map = checker.getIndexTypeOfType(type, ts.IndexKind.String); // labels, resources.limits, …
  for (const [key, v] of Object.entries(value)) {
    const prop = checker.getPropertyOfType(type, key);
    if (prop) walk(checker, v, checker.getTypeOfSymbol(prop), `${path}.${key}`, problems);
    else if (map) walk(checker, v, map, `${path}.${key}`, problems);
    else problems.push(`${path}.${key}`);
  }
}

/**
 * The WebGPU backend through Dawn (npm `webgpu`, which ships `dawn.node`) and `@tensorflow/tfjs-backend-webgpu`,
 * both optional dependencies: a machine without them, or without a GPU, still runs every other backend.
 *
 * Dawn picks its own backend (Vulkan on Linux, Metal on macOS, D3D12 on Windows) for a hardware adapter. Where
 * there is none, `software: true` asks for Mesa's llvmpipe through Dawn's OpenGL ES backend: Dawn refuses Mesa
 * 22.3's Vulkan driver (lavapipe), and its OpenGL backend needs `featureLevel: 'compatibility'` and, without a
 * display, `EGL_PLATFORM=surfaceless` (Debian packages libegl1, libegl-mesa0, libgles2, libgl1-mesa-dri). That is how
 * the suite checks the GPU path on machines with no GPU; `auto` never picks it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isMainThread } from 'node:worker_threads';

type Tf = typeof import('@tensorflow/tfjs');

/**
 * Mesa reads EGL_PLATFORM from the process's environment, which only the main thread can set (a worker's
 * process.env is its own copy): whoever starts a worker that will use the software adapter calls this first.
 */
export function prepareSoftwareGpuEnv(): void {
  if (isMainThread) process.env.EGL_PLATFORM ??= 'surfaceless'; // no display: Mesa's EGL without a window system
}

/** What an agent reports about the GPU it computes on. */
export interface GpuInfo {
  vendor: string;
  architecture: string;
  description: string;
  /** Dawn's backend: what was asked for (vulkan, metal, d3d12 by platform; opengl for the software adapter). */
  dawnBackend: string;
  /** A CPU implementation of WebGPU (llvmpipe, SwiftShader), not a GPU. */
  software: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
}

export interface LoadedWebGpu {
  info: GpuInfo;
  /** Destroys the device, so the process can exit. */
  release(): void;
}

interface DawnModule {
  create(flags: string[]): GPU;
  globals: Record<string, unknown>;
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software/i;
const platformBackend = (): string => (process.platform === 'darwin' ? 'metal' : process.platform === 'win32' ? 'd3d12' : 'vulkan');

/**
 * Where the Vulkan loader is, on Linux: the dynamic linker's cache or LD_LIBRARY_PATH. `auto` asks Dawn for a GPU
 * only where there is one (Dawn prints a warning of its own when it cannot load Vulkan); null elsewhere than Linux.
 */
export function vulkanLoader(): string | null | undefined {
  if (process.platform !== 'linux') return undefined;
  for (const dir of (process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean)) {
    if (existsSync(join(dir, 'libvulkan.so.1'))) return join(dir, 'libvulkan.so.1');
  }
  try {
    if (readFileSync('/etc/ld.so.cache').includes('libvulkan.so.1')) return 'libvulkan.so.1 (ld.so.cache)';
  } catch {
    // no cache: look in the usual places
  }
  for (const dir of ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/lib/x86_64-linux-gnu', '/usr/local/lib']) {
    if (existsSync(join(dir, 'libvulkan.so.1'))) return join(dir, 'libvulkan.so.1');
  }
  return null;
}

/** Why WebGPU cannot run here, as a user should read it. */
export class WebGpuUnavailable extends Error {}

/**
 * Makes `webgpu` tf's backend on a Dawn device: a hardware adapter, or with `software` Mesa's llvmpipe. Throws
 * WebGpuUnavailable saying why when the packages, an adapter or a device are missing.
 */
export async function loadWebGpu(tf: Tf, options: { software?: boolean } = {}): Promise<LoadedWebGpu> {
  let dawn: DawnModule;
  try {
    dawn = (await import('webgpu')) as unknown as DawnModule;
  } catch (err) {
    throw new WebGpuUnavailable(`the optional package webgpu (Dawn) is not installed or does not load here: ${(err as Error).message}`);
  }
  let backendModule: typeof import('@tensorflow/tfjs-backend-webgpu');
  try {
    backendModule = await import('@tensorflow/tfjs-backend-webgpu');
  } catch (err) {
    throw new WebGpuUnavailable(`the optional package @tensorflow/tfjs-backend-webgpu is not installed: ${(err as Error).message}`);
  }
  // Dawn's WebGPU classes (GPUBufferUsage, …) as globals: tfjs-backend-webgpu reads them so.
  for (const [k, v] of Object.entries(dawn.globals)) if (!(k in globalThis)) Object.assign(globalThis, { [k]: v });
  let gpu: GPU, dawnBackend: string, adapter: GPUAdapter | null;
  if (options.software) {
    prepareSoftwareGpuEnv();
    dawnBackend = 'opengl';
    gpu = dawn.create(['backend=opengl']);
    adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' } as GPURequestAdapterOptions);
  } else {
    dawnBackend = platformBackend();
    gpu = dawn.create([]);
    adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  }
  if (!adapter) {
    const hint = options.software
      ? `${isMainThread || process.env.EGL_PLATFORM ? '' : ' (in a worker thread: the main thread must set EGL_PLATFORM=surfaceless before starting it, prepareSoftwareGpuEnv)'}; npm run setup installs Mesa's packages`
      : vulkanLoader() === null
        ? ': this machine has no Vulkan loader (libvulkan.so.1); install the GPU driver with its Vulkan ICD and libvulkan1 (scripts/gpu-check.sh says what is missing)'
        : '; scripts/gpu-check.sh lists the Vulkan drivers it finds';
    throw new WebGpuUnavailable(`Dawn found no ${options.software ? 'software (OpenGL ES, llvmpipe)' : dawnBackend} adapter${hint}`);
  }
  const a = adapter.info;
  const software = (a as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter === true || SOFTWARE.test(`${a.vendor} ${a.architecture} ${a.description} ${a.device}`);
  if (software && !options.software) throw new WebGpuUnavailable(`the only adapter is a software one (${a.description || a.vendor}), no GPU`);
  const al = adapter.limits;
  const limits = { maxBufferSize: al.maxBufferSize, maxStorageBufferBindingSize: al.maxStorageBufferBindingSize };
  // What tfjs' own factory asks for, and the workgroup sizes its kernels use (MatMulReduceProgram: 256 wide, over
  // the compatibility default of 128: without these its pipelines are invalid and a matmul silently reads 0).
  const device = await adapter.requestDevice({
    requiredFeatures: adapter.features.has('timestamp-query') ? ['timestamp-query'] : [],
    requiredLimits: {
      ...limits,
      maxComputeWorkgroupStorageSize: al.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: al.maxComputeWorkgroupsPerDimension,
      maxComputeWorkgroupSizeX: al.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: al.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupSizeZ: al.maxComputeWorkgroupSizeZ,
      maxComputeInvocationsPerWorkgroup: al.maxComputeInvocationsPerWorkgroup,
    },
  });
  // A validation error means a kernel did not run: its output would be garbage, never an answer to use.
  const errors: string[] = [];
  device.addEventListener('uncapturederror', (e) => errors.push((e as GPUUncapturedErrorEvent).error.message.split('\n')[0]!));
  let lost: string | null = null;
  void device.lost.then((l) => { lost = l.reason === 'destroyed' ? null : `the GPU device was lost (${l.reason}): ${l.message}`; });
  const info: GpuInfo = {
    vendor: a.vendor, architecture: a.architecture, description: a.description || a.device, dawnBackend, software,
    maxBufferSize: limits.maxBufferSize, maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
  };
  // tfjs-backend-webgpu checks navigator.gpu before it starts (Node 20 has no navigator; 21+ has one without gpu).
  const g = globalThis as { navigator?: { gpu?: GPU } };
  if (!g.navigator) Object.defineProperty(globalThis, 'navigator', { value: {}, configurable: true, writable: true });
  if (!g.navigator!.gpu) Object.defineProperty(g.navigator!, 'gpu', { value: gpu, configurable: true });
  // The package registers a `webgpu` backend that asks navigator.gpu with default options; ours uses this device.
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => new backendModule.WebGPUBackend(device, a as never));
  if (!(await tf.setBackend('webgpu'))) throw new WebGpuUnavailable('the tfjs WebGPU backend failed to initialise on the Dawn device');
  // A self-check: a product whose answer is known, and no validation error on the way.
  const x = tf.tidy(() => tf.matMul(tf.ones([3, 5]), tf.fill([5, 2], 2)));
  const got = await x.data();
  x.dispose();
  if (errors.length || got.some((v) => v !== 10)) {
    device.destroy();
    throw new WebGpuUnavailable(`WebGPU on ${info.description || info.vendor} (${dawnBackend}) computed a wrong product${errors.length ? `: ${errors[0]}` : ''}`);
  }
  // From now on every read checks the device (model/tensor-values.ts): a kernel that failed validation (a tensor
  // over the binding limit, say) or a lost device is an error there, never numbers read from a buffer nothing wrote.
  const { setDeviceCheck } = await import('../tensor-values.ts');
  setDeviceCheck(() => {
    if (lost) throw new Error(`WebGPU on ${info.description || info.vendor}: ${lost}; restart the process`);
    if (errors.length) {
      const first = errors[0]!, more = errors.length - 1;
      errors.length = 0;
      throw new Error(`WebGPU on ${info.description || info.vendor} refused a kernel, so its output is garbage: ${first}${more ? ` (and ${more} more)` : ''}`);
    }
  });
  return {
    info,
    // tfjs' backend first (it destroys every buffer it made, mapped staging buffers included), then the device:
    // destroying the device with tfjs' buffers still mapped killed the process with a fatal N-API error now and then.
    release: () => {
      setDeviceCheck(undefined);
      if (tf.findBackend('webgpu')) tf.removeBackend('webgpu');
      device.destroy();
    },
  };
}

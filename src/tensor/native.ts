/**
 * Loads the libtorch addon. Process-wide settings that libtorch's dependencies read once at
 * load time (OpenMP, OpenBLAS) are set here first, unless the user set them.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Opaque handle of a native at::Tensor. */
export type Handle = { readonly __handle: unique symbol };
/** Opaque handle of a c10d process group (native/src/c10d.cc). */
export type GroupHandle = { readonly __group: unique symbol };

export interface NativeAddon {
  fromBuffer(data: ArrayBufferView, dtypeCode: number, shape: number[]): Handle;
  toBuffer(t: Handle): ArrayBuffer;
  /** [dtypeCode, requiresGrad, isLeaf, ...shape] */
  meta(t: Handle): [number, boolean, boolean, ...number[]];
  item(t: Handle): number | boolean;
  free(t: Handle): void;
  isFreed(t: Handle): boolean;
  sameStorage(a: Handle, b: Handle): boolean;
  stats(): { liveHandles: number; reportedBytes: number };
  setNumThreads(n: number): void;
  getNumThreads(): number;
  manualSeed(seed: number): void;
  getRngState(): Handle;
  setRngState(state: Handle): void;
  config(): string;
  lookupOp(name: string, overload: string): number;
  opSchema(id: number): string;
  callOp(id: number, args: unknown[], discardResult?: boolean): unknown;
  backward(roots: Handle[], grads: (Handle | null)[], retainGraph: boolean): void;
  grad(outputs: Handle[], inputs: Handle[], gradOutputs: (Handle | null)[], retain: boolean, create: boolean, allowUnused: boolean): (Handle | null)[];
  getGrad(t: Handle): Handle | null;
  setGrad(t: Handle, g: Handle | null): void;
  setRequiresGrad(t: Handle, value: boolean): void;
  setGradEnabled(enabled: boolean): boolean;
  isGradEnabled(): boolean;
  profilerStart(tracePath: string): void;
  // Composite operations in one call each (native/src/fused.cc); same ATen ops as their TS forms.
  linear(x: Handle, weight: Handle, bias: Handle | null): Handle;
  rmsNorm(x: Handle, weight: Handle, eps: number): Handle;
  rotary(x: Handle, cos: Handle, sin: Handle, interleaved: boolean, scale: number): Handle;
  narrowCopy(dst: Handle, dim: number, start: number, src: Handle): void;
  groupedAttention(q: Handle, k: Handle, v: Handle, mask: Handle | null, causalOffset: number | null): Handle;
  // Block-affine 8-bit weights (native/src/quant.cc).
  quantizeBlocks(w: Handle, tolerance: number): [Handle, Handle, Handle] | null;
  blockLinear(x: Handle, codes: Handle, scale: Handle, offset: Handle, bias: Handle | null): Handle;
  version(t: Handle): number;
  profilerStop(): void;
  distInit(
    rank: number,
    size: number,
    masterHost: string,
    masterPort: number,
    localAddr: string,
    timeoutMs: number,
    threads: number,
    joinTimeoutMs: number,
  ): GroupHandle;
  /** op: 0 sum, 1 average, 2 max, 3 min */
  distAllreduce(g: GroupHandle, tensors: Handle[], op: number): void;
  distBroadcast(g: GroupHandle, tensors: Handle[], root: number): void;
  distBarrier(g: GroupHandle): void;
  distDestroy(g: GroupHandle): void;
}

/**
 * OpenBLAS picks its kernels from the CPU model name; inside VMs it often fails to recognise
 * the CPU and falls back to generic kernels (measured here: 35 GFLOP/s instead of 170). Choose
 * from the instruction-set flags instead.
 */
function openblasCoreType(): string | undefined {
  try {
    const flags =
      readFileSync('/proc/cpuinfo', 'utf8')
        .match(/^flags\s*:(.*)$/m)?.[1]
        .split(/\s+/) ?? [];
    if (flags.includes('avx512f') && flags.includes('avx512bw')) return 'SkylakeX';
    if (flags.includes('avx2') && flags.includes('fma')) return 'Haswell';
  } catch {
    /* not Linux: let OpenBLAS detect */
  }
  return undefined;
}

function configureProcess(): void {
  const env = process.env;
  // An idle OpenMP worker must not spin on the core OpenBLAS's own thread needs.
  env.OMP_WAIT_POLICY ??= 'PASSIVE';
  env.OPENBLAS_CORETYPE ??= openblasCoreType();
  if (env.OPENBLAS_CORETYPE === undefined) delete env.OPENBLAS_CORETYPE;
}

function findAddon(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // dist/src/tensor -> repo root, or src/tensor when run from sources
  for (const up of ['../../..', '../..']) {
    const candidate = join(here, up, 'native', 'build', 'Release', 'softpress_native.node');
    if (existsSync(candidate)) return candidate;
  }
  const root = join(here, '../../..');
  const checkout = existsSync(join(root, 'scripts', 'setup.sh'));
  throw new Error(
    `softpress: the native addon is not built (${join(root, 'native', 'build', 'Release', 'softpress_native.node')}). ` +
      (checkout
        ? 'Run `npm run setup` (installs libtorch-dev and builds it).'
        : 'npm skips the install scripts of dependencies it was not told to allow: run ' +
          '`npm install-scripts approve softpress && npm rebuild softpress` in your project ' +
          '(or set `"allowScripts": {"softpress": true}` in its package.json before installing). The build needs libtorch-dev, g++, make and python3.'),
  );
}

configureProcess();
export const native: NativeAddon = createRequire(import.meta.url)(findAddon()) as NativeAddon;

/** softpress tensors: libtorch through our addon, with autograd and scoped memory. */
import { native } from './native.js';
import { Tensor, TensorError } from './tensor.js';

export * from './tensor.js';
export * from './dtype.js';
export { tidy, tidyAsync, noGrad, enableGrad, isGradEnabled, memoryStats } from './scope.js';

/** Seeds libtorch's default generator (randn, rand, dropout, randint, ...). */
export function manualSeed(seed: number): void {
  native.manualSeed(seed);
}

/** The default generator's state (a uint8 tensor), for exact resume. */
export function getRngState(): Tensor {
  return new Tensor(native.getRngState());
}
export function setRngState(state: Tensor): void {
  native.setRngState(state.handle);
}

export function setNumThreads(n: number): void {
  native.setNumThreads(n);
}
export function getNumThreads(): number {
  return native.getNumThreads();
}

/** libtorch's build and parallelism configuration, as text. */
export function backendInfo(): string {
  return native.config();
}

/** Backward from several roots at once, with their gradients (null = 1 for scalars). */
export function backward(roots: Tensor[], grads?: (Tensor | null)[], retainGraph = false): void {
  try {
    native.backward(
      roots.map((r) => r.handle),
      roots.map((_, i) => grads?.[i]?.handle ?? null),
      retainGraph,
    );
  } catch (e) {
    const msg = (e as Error).message;
    throw new TensorError(`${msg.startsWith('backward:') ? msg : `backward: ${msg}`} (roots: ${roots.map((r) => r.describe()).join(', ')})`);
  }
}

/** Gradients of outputs w.r.t. inputs without touching .grad (torch.autograd.grad). */
export function grad(
  outputs: Tensor[],
  inputs: Tensor[],
  opts: { gradOutputs?: (Tensor | null)[]; retainGraph?: boolean; createGraph?: boolean; allowUnused?: boolean } = {},
): (Tensor | null)[] {
  try {
    const gs = native.grad(
      outputs.map((o) => o.handle),
      inputs.map((i) => i.handle),
      outputs.map((_, i) => opts.gradOutputs?.[i]?.handle ?? null),
      opts.retainGraph ?? false,
      opts.createGraph ?? false,
      opts.allowUnused ?? false,
    );
    return gs.map((h) => (h === null ? null : new Tensor(h)));
  } catch (e) {
    throw new TensorError(`grad: ${(e as Error).message}`);
  }
}

// Two threads by default (the machine has two cores); SOFTPRESS_THREADS overrides.
setNumThreads(Number(process.env.SOFTPRESS_THREADS ?? 2) || 2);
export { profile, type OpTime } from './profile.js';
export { ProcessGroup, DistError, parseMaster, localAddressFor, DEFAULT_DIST_TIMEOUT_MS, type ProcessGroupOptions, type ReduceOp } from './dist.js';

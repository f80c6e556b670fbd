/**
 * The Tensor: a typed face over a native at::Tensor. Every operator is libtorch's own (reached
 * through the dispatcher by schema name), so broadcasting, type promotion and autograd behave
 * exactly as in PyTorch. Native memory is freed by scopes (see scope.ts), explicitly by
 * free(), or by the garbage collector as a last resort.
 */
import { native, type Handle } from './native.js';
import { DTYPE_CODE, dtypeFromCode, isFloating, type AnyTypedArray, type DType } from './dtype.js';
import { registerTensorClass, track } from './scope.js';

export class TensorError extends Error {
  override name = 'TensorError';
}

// ---- operator lookup and calls -------------------------------------------------------------

const opIds = new Map<string, number>();

/** Id of an ATen operator by "name.overload" (overload optional), looked up once. */
function opId(op: string): number {
  let id = opIds.get(op);
  if (id === undefined) {
    const dot = op.indexOf('.');
    const name = 'aten::' + (dot < 0 ? op : op.slice(0, dot));
    const overload = dot < 0 ? '' : op.slice(dot + 1);
    id = native.lookupOp(name, overload);
    opIds.set(op, id);
  }
  return id;
}

const opPresent = new Map<string, boolean>();

/** Whether the linked libtorch has an ATen operator ("name.overload", overload optional); asked once. */
export function hasOp(op: string): boolean {
  let present = opPresent.get(op);
  if (present === undefined) {
    try {
      opId(op);
      present = true;
    } catch {
      present = false;
    }
    opPresent.set(op, present);
  }
  return present;
}

/** The schema of an ATen operator, e.g. for docs and error messages. */
export function opSchema(op: string): string {
  return native.opSchema(opId(op));
}

function toNativeArg(a: unknown): unknown {
  if (a instanceof Tensor) return a.handle;
  if (Array.isArray(a)) return a.map(toNativeArg);
  return a;
}

function describeArgs(args: unknown[]): string {
  const parts: string[] = [];
  for (const a of args) {
    if (a instanceof Tensor) parts.push(a.describe());
    else if (Array.isArray(a) && a.some((x) => x instanceof Tensor))
      parts.push(`[${a.map((x) => (x instanceof Tensor ? x.describe() : String(x))).join(', ')}]`);
  }
  return parts.length ? ` (inputs: ${parts.join(', ')})` : '';
}

function fromNative(v: unknown): unknown {
  if (v === null || v === undefined) return v;
  if (Array.isArray(v)) return v.map(fromNative);
  if (typeof v === 'object') return new Tensor(v as Handle);
  return v;
}

/** The error of a failed call, naming the operator (argument errors do not) and the inputs. */
function opError(op: string, e: unknown, args: unknown[]): TensorError {
  const msg = (e as Error).message;
  const named = msg.startsWith('aten::') ? msg : `aten::${op}: ${msg}`;
  return new TensorError(`${named}${describeArgs(args)}`);
}

/** Calls an ATen operator; tensor results come back as Tensors (tuples as arrays). */
export function callOp(op: string, args: unknown[]): unknown {
  const id = opId(op);
  let out: unknown;
  try {
    out = native.callOp(id, args.map(toNativeArg));
  } catch (e) {
    throw opError(op, e, args);
  }
  return fromNative(out);
}

function call(op: string, args: unknown[]): Tensor {
  return callOp(op, args) as Tensor;
}

/** The libtorch code of a dtype; an unknown name is a TensorError naming the operation and the known names. */
function dtypeCode(op: string, dtype: unknown): number {
  const code = typeof dtype === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_CODE, dtype) ? DTYPE_CODE[dtype as DType] : undefined;
  if (code === undefined)
    throw new TensorError(`${op}: unknown dtype ${typeof dtype === 'string' ? `'${dtype}'` : String(dtype)} (known: ${Object.keys(DTYPE_CODE).join(', ')})`);
  return code;
}

/**
 * Calls an in-place ATen operator whose result (an alias of an input, or nothing, as for the
 * `_foreach_*_` family) is not wanted: no handle is created.
 */
export function callInPlace(op: string, args: unknown[]): void {
  const id = opId(op);
  try {
    native.callOp(id, args.map(toNativeArg), true);
  } catch (e) {
    throw opError(op, e, args);
  }
}

/** Calls one of the addon's composite operations (native/src/fused.cc), naming it and its inputs on failure. */
function fused(name: string, inputs: Tensor[], fn: () => Handle): Tensor {
  let h: Handle;
  try {
    h = fn();
  } catch (e) {
    throw new TensorError(`${name}: ${(e as Error).message.replace(new RegExp(`^${name}: `), '')}${describeArgs(inputs)}`);
  }
  return new Tensor(h);
}

// ---- Tensor ---------------------------------------------------------------------------------

export type Shape = readonly number[];
type TensorOrNumber = Tensor | number;
const REDUCTION = { none: 0, mean: 1, sum: 2 } as const;

function normDim(dim: number, rank: number): number {
  return dim < 0 ? dim + rank : dim;
}

export class Tensor {
  readonly handle: Handle;
  private cachedShape?: number[];
  private cachedDtype?: DType;

  constructor(handle: Handle) {
    this.handle = handle;
    track(this);
  }

  // -- metadata --
  private loadMeta(): void {
    let m: ReturnType<typeof native.meta>;
    try {
      m = native.meta(this.handle);
    } catch (e) {
      throw new TensorError((e as Error).message);
    }
    this.cachedDtype = dtypeFromCode(m[0]);
    this.cachedShape = m.slice(3) as number[];
  }
  get shape(): number[] {
    if (!this.cachedShape) this.loadMeta();
    return this.cachedShape!.slice();
  }
  get dtype(): DType {
    if (!this.cachedDtype) this.loadMeta();
    return this.cachedDtype!;
  }
  get rank(): number {
    if (!this.cachedShape) this.loadMeta();
    return this.cachedShape!.length;
  }
  get numel(): number {
    if (!this.cachedShape) this.loadMeta();
    return this.cachedShape!.reduce((a, b) => a * b, 1);
  }
  size(dim: number): number {
    const s = this.shape;
    const d = normDim(dim, s.length);
    if (d < 0 || d >= s.length) throw new TensorError(`size(${dim}): tensor has ${s.length} dims ${this.describe()}`);
    return s[d];
  }
  get requiresGrad(): boolean {
    return native.meta(this.handle)[1];
  }
  /** The in-place modification counter of this tensor's data (shared with its views). */
  get version(): number {
    return native.version(this.handle);
  }
  get isLeaf(): boolean {
    return native.meta(this.handle)[2];
  }
  get freed(): boolean {
    return native.isFreed(this.handle);
  }
  describe(): string {
    if (native.isFreed(this.handle)) return 'Tensor<freed>';
    return `${this.dtype}[${this.shape.join(', ')}]`;
  }
  toString(): string {
    return `Tensor(${this.describe()})`;
  }

  // -- lifetime --
  /** Frees the native tensor now. Later use throws a clear error. */
  free(): void {
    native.free(this.handle);
  }
  [Symbol.dispose](): void {
    this.free();
  }
  /** Removes this tensor from scope tracking: it lives until free() or garbage collection. */
  keep(): this {
    track(this, true);
    return this;
  }

  // -- data out --
  /** Elements in row-major order. Half types are widened to float32, bool to uint8. */
  toArray(): AnyTypedArray {
    const d = this.dtype;
    if (d === 'float16' || d === 'bfloat16') {
      const f = this.to('float32');
      try {
        return f.toArray();
      } finally {
        f.free();
      }
    }
    const buf = native.toBuffer(this.handle);
    switch (d) {
      case 'float32':
        return new Float32Array(buf);
      case 'float64':
        return new Float64Array(buf);
      case 'int64':
        return new BigInt64Array(buf);
      case 'int32':
        return new Int32Array(buf);
      case 'int16':
        return new Int16Array(buf);
      case 'int8':
        return new Int8Array(buf);
      default:
        return new Uint8Array(buf);
    }
  }
  /** Elements as plain numbers (int64 converted with Number()). */
  toNumbers(): number[] {
    const a = this.toArray();
    return a instanceof BigInt64Array ? Array.from(a, Number) : Array.from(a as ArrayLike<number>);
  }
  /** The raw bytes in row-major order (any dtype, no conversion). */
  toBytes(): Uint8Array {
    return new Uint8Array(native.toBuffer(this.handle));
  }
  item(): number {
    try {
      return Number(native.item(this.handle));
    } catch (e) {
      throw new TensorError(`${(e as Error).message} ${this.describe()}`);
    }
  }

  // -- autograd --
  setRequiresGrad(value = true): this {
    try {
      native.setRequiresGrad(this.handle, value);
    } catch (e) {
      throw new TensorError(`${(e as Error).message} ${this.describe()}`);
    }
    return this;
  }
  /** The accumulated gradient, or null. A new handle each call (tracked by the current scope). */
  get grad(): Tensor | null {
    const g = native.getGrad(this.handle);
    return g === null ? null : new Tensor(g);
  }
  set grad(g: Tensor | null) {
    native.setGrad(this.handle, g === null ? null : g.handle);
  }
  zeroGrad(): void {
    native.setGrad(this.handle, null);
  }
  backward(grad?: Tensor, retainGraph = false): void {
    try {
      native.backward([this.handle], [grad ? grad.handle : null], retainGraph);
    } catch (e) {
      const msg = (e as Error).message;
      throw new TensorError(`${msg.startsWith('backward:') ? msg : `backward: ${msg}`} ${this.describe()}`);
    }
  }
  detach(): Tensor {
    return call('detach', [this]);
  }

  // -- conversion and copies --
  to(dtype: DType): Tensor {
    return call('to.dtype', [this, dtypeCode('to', dtype), false, false]);
  }
  float(): Tensor {
    return this.to('float32');
  }
  long(): Tensor {
    return this.to('int64');
  }
  clone(): Tensor {
    return call('clone', [this]);
  }
  /** Whether this tensor and `other` are views of one storage (writes to one show in the other). */
  sharesStorageWith(other: Tensor): boolean {
    return native.sameStorage(this.handle, other.handle);
  }
  contiguous(): Tensor {
    return call('contiguous', [this]);
  }

  // -- views and indexing --
  reshape(...shape: number[]): Tensor {
    return call('reshape', [this, shape]);
  }
  view(...shape: number[]): Tensor {
    return call('view', [this, shape]);
  }
  flatten(startDim = 0, endDim = -1): Tensor {
    return call('flatten.using_ints', [this, startDim, endDim]);
  }
  transpose(dim0: number, dim1: number): Tensor {
    return call('transpose.int', [this, dim0, dim1]);
  }
  /** Transpose of the last two dims. */
  get T(): Tensor {
    return this.transpose(-2, -1);
  }
  permute(...dims: number[]): Tensor {
    return call('permute', [this, dims]);
  }
  unsqueeze(dim: number): Tensor {
    return call('unsqueeze', [this, dim]);
  }
  squeeze(dim: number): Tensor {
    return call('squeeze.dim', [this, dim]);
  }
  expand(...shape: number[]): Tensor {
    return call('expand', [this, shape, false]);
  }
  expandAs(other: Tensor): Tensor {
    return this.expand(...other.shape);
  }
  repeat(...times: number[]): Tensor {
    return call('repeat', [this, times]);
  }
  narrow(dim: number, start: number, length: number): Tensor {
    return call('narrow', [this, dim, start, length]);
  }
  /** Python-style slice along one dim: [start, end) with step; negative indices count from the end. */
  slice(dim: number, start?: number, end?: number, step = 1): Tensor {
    return call('slice.Tensor', [this, dim, start ?? null, end ?? null, step]);
  }
  select(dim: number, index: number): Tensor {
    return call('select.int', [this, dim, index]);
  }
  indexSelect(dim: number, index: Tensor): Tensor {
    return call('index_select', [this, dim, index]);
  }
  /** Advanced indexing: one index tensor (or null for ':') per leading dim. */
  index(indices: (Tensor | null)[]): Tensor {
    return call('index.Tensor', [this, indices]);
  }
  gather(dim: number, index: Tensor): Tensor {
    return call('gather', [this, dim, index, false]);
  }
  scatterAdd(dim: number, index: Tensor, src: Tensor): Tensor {
    return call('scatter_add', [this, dim, index, src]);
  }
  maskedFill(mask: Tensor, value: number | Tensor): Tensor {
    return typeof value === 'number' ? call('masked_fill.Scalar', [this, mask, value]) : call('masked_fill.Tensor', [this, mask, value]);
  }
  split(size: number | number[], dim = 0): Tensor[] {
    return (typeof size === 'number' ? callOp('split.Tensor', [this, size, dim]) : callOp('split_with_sizes', [this, size, dim])) as Tensor[];
  }
  chunk(chunks: number, dim = 0): Tensor[] {
    return callOp('chunk', [this, chunks, dim]) as Tensor[];
  }
  tril(diagonal = 0): Tensor {
    return call('tril', [this, diagonal]);
  }
  triu(diagonal = 0): Tensor {
    return call('triu', [this, diagonal]);
  }

  // -- elementwise math (broadcasting) --
  add(other: TensorOrNumber, alpha = 1): Tensor {
    return typeof other === 'number' ? call('add.Scalar', [this, other, alpha]) : call('add.Tensor', [this, other, alpha]);
  }
  sub(other: TensorOrNumber, alpha = 1): Tensor {
    return typeof other === 'number' ? call('sub.Scalar', [this, other, alpha]) : call('sub.Tensor', [this, other, alpha]);
  }
  /** other - this */
  rsub(other: number): Tensor {
    return call('rsub.Scalar', [this, other, 1]);
  }
  mul(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('mul.Scalar', [this, other]) : call('mul.Tensor', [this, other]);
  }
  div(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('div.Scalar', [this, other]) : call('div.Tensor', [this, other]);
  }
  pow(exponent: TensorOrNumber): Tensor {
    return typeof exponent === 'number' ? call('pow.Tensor_Scalar', [this, exponent]) : call('pow.Tensor_Tensor', [this, exponent]);
  }
  neg(): Tensor {
    return call('neg', [this]);
  }
  abs(): Tensor {
    return call('abs', [this]);
  }
  exp(): Tensor {
    return call('exp', [this]);
  }
  log(): Tensor {
    return call('log', [this]);
  }
  sqrt(): Tensor {
    return call('sqrt', [this]);
  }
  rsqrt(): Tensor {
    return call('rsqrt', [this]);
  }
  square(): Tensor {
    return call('square', [this]);
  }
  sin(): Tensor {
    return call('sin', [this]);
  }
  cos(): Tensor {
    return call('cos', [this]);
  }
  tanh(): Tensor {
    return call('tanh', [this]);
  }
  sigmoid(): Tensor {
    return call('sigmoid', [this]);
  }
  relu(): Tensor {
    return call('relu', [this]);
  }
  silu(): Tensor {
    return call('silu', [this]);
  }
  gelu(approximate: 'none' | 'tanh' = 'none'): Tensor {
    return call('gelu', [this, approximate]);
  }
  clamp(min?: number | null, max?: number | null): Tensor {
    return call('clamp', [this, min ?? null, max ?? null]);
  }
  /** Elementwise comparisons, returning bool tensors. */
  eq(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('eq.Scalar', [this, other]) : call('eq.Tensor', [this, other]);
  }
  ne(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('ne.Scalar', [this, other]) : call('ne.Tensor', [this, other]);
  }
  lt(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('lt.Scalar', [this, other]) : call('lt.Tensor', [this, other]);
  }
  le(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('le.Scalar', [this, other]) : call('le.Tensor', [this, other]);
  }
  gt(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('gt.Scalar', [this, other]) : call('gt.Tensor', [this, other]);
  }
  ge(other: TensorOrNumber): Tensor {
    return typeof other === 'number' ? call('ge.Scalar', [this, other]) : call('ge.Tensor', [this, other]);
  }
  logicalNot(): Tensor {
    return call('logical_not', [this]);
  }
  logicalAnd(other: Tensor): Tensor {
    return call('logical_and', [this, other]);
  }
  logicalOr(other: Tensor): Tensor {
    return call('logical_or', [this, other]);
  }

  // -- linear algebra --
  matmul(other: Tensor): Tensor {
    return call('matmul', [this, other]);
  }
  bmm(other: Tensor): Tensor {
    return call('bmm', [this, other]);
  }

  // -- reductions --
  /** Sum over dims (all when omitted). */
  sum(dim?: number | number[], keepDim = false): Tensor {
    if (dim === undefined) return call('sum', [this, null]);
    return call('sum.dim_IntList', [this, typeof dim === 'number' ? [dim] : dim, keepDim, null]);
  }
  mean(dim?: number | number[], keepDim = false): Tensor {
    if (dim === undefined) return call('mean', [this, null]);
    return call('mean.dim', [this, typeof dim === 'number' ? [dim] : dim, keepDim, null]);
  }
  /** Max over everything (one value). */
  max(): Tensor;
  /** Max along a dim: values and indices. */
  max(dim: number, keepDim?: boolean): { values: Tensor; indices: Tensor };
  max(dim?: number, keepDim = false): Tensor | { values: Tensor; indices: Tensor } {
    if (dim === undefined) return call('max', [this]);
    const [values, indices] = callOp('max.dim', [this, dim, keepDim]) as Tensor[];
    return { values, indices };
  }
  min(): Tensor {
    return call('min', [this]);
  }
  amax(dim: number | number[], keepDim = false): Tensor {
    return call('amax', [this, typeof dim === 'number' ? [dim] : dim, keepDim]);
  }
  argmax(dim?: number, keepDim = false): Tensor {
    return call('argmax', [this, dim ?? null, keepDim]);
  }
  topk(k: number, dim = -1, largest = true, sorted = true): { values: Tensor; indices: Tensor } {
    const [values, indices] = callOp('topk', [this, k, dim, largest, sorted]) as Tensor[];
    return { values, indices };
  }
  sort(dim = -1, descending = false): { values: Tensor; indices: Tensor } {
    const [values, indices] = callOp('sort', [this, dim, descending]) as Tensor[];
    return { values, indices };
  }
  cumsum(dim: number): Tensor {
    return call('cumsum', [this, dim, null]);
  }
  logsumexp(dim: number | number[], keepDim = false): Tensor {
    return call('logsumexp', [this, typeof dim === 'number' ? [dim] : dim, keepDim]);
  }
  /** Vector p-norm over dims (all when omitted). */
  norm(p = 2, dim?: number | number[], keepDim = false): Tensor {
    return call('linalg_vector_norm', [this, p, dim === undefined ? null : typeof dim === 'number' ? [dim] : dim, keepDim, null]);
  }
  softmax(dim: number): Tensor {
    return call('softmax.int', [this, dim, null]);
  }
  logSoftmax(dim: number): Tensor {
    return call('log_softmax.int', [this, dim, null]);
  }
  any(): Tensor {
    return call('any', [this]);
  }
  all(): Tensor {
    return call('all', [this]);
  }

  // -- in place (for optimisers and buffers; run them under noGrad for leaves that require grad) --
  copy_(src: Tensor): this {
    callInPlace('copy_', [this, src, false]);
    return this;
  }
  /** Copies src into this tensor's slice [start, start + src.size(dim)) along dim, in place (one call, no view handle). */
  narrowCopy_(dim: number, start: number, src: Tensor): this {
    try {
      native.narrowCopy(this.handle, dim, start, src.handle);
    } catch (e) {
      throw new TensorError(`${(e as Error).message} (inputs: ${this.describe()}, ${src.describe()})`);
    }
    return this;
  }
  zero_(): this {
    callInPlace('zero_', [this]);
    return this;
  }
  fill_(value: number): this {
    callInPlace('fill_.Scalar', [this, value]);
    return this;
  }
  add_(other: TensorOrNumber, alpha = 1): this {
    if (typeof other === 'number') callInPlace('add_.Scalar', [this, other, alpha]);
    else callInPlace('add_.Tensor', [this, other, alpha]);
    return this;
  }
  mul_(other: TensorOrNumber): this {
    if (typeof other === 'number') callInPlace('mul_.Scalar', [this, other]);
    else callInPlace('mul_.Tensor', [this, other]);
    return this;
  }
  /** this[index[i]] += alpha * source[i] along dim (repeated indices accumulate). */
  indexAdd_(dim: number, index: Tensor, source: Tensor, alpha = 1): this {
    callInPlace('index_add_', [this, dim, index, source, alpha]);
    return this;
  }
  /** this += value * t1 * t2 */
  addcmul_(t1: Tensor, t2: Tensor, value = 1): this {
    callInPlace('addcmul_', [this, t1, t2, value]);
    return this;
  }
  /** this += value * t1 / t2 */
  addcdiv_(t1: Tensor, t2: Tensor, value = 1): this {
    callInPlace('addcdiv_', [this, t1, t2, value]);
    return this;
  }
  lerp_(end: Tensor, weight: number): this {
    callInPlace('lerp_.Scalar', [this, end, weight]);
    return this;
  }
  normal_(mean = 0, std = 1): this {
    callInPlace('normal_', [this, mean, std, null]);
    return this;
  }
  uniform_(from = 0, to = 1): this {
    callInPlace('uniform_', [this, from, to, null]);
    return this;
  }
  maskedFill_(mask: Tensor, value: number): this {
    callInPlace('masked_fill_.Scalar', [this, mask, value]);
    return this;
  }

  get isFloatingPoint(): boolean {
    return isFloating(this.dtype);
  }
}

registerTensorClass(Tensor);

// ---- creation -----------------------------------------------------------------------------

export interface CreateOptions {
  dtype?: DType;
  requiresGrad?: boolean;
}

function finish(t: Tensor, opts?: CreateOptions): Tensor {
  if (opts?.requiresGrad) t.setRequiresGrad(true);
  return t;
}

function checkShape(op: string, shape: Shape): number[] {
  for (const s of shape) {
    if (!Number.isInteger(s) || s < 0) throw new TensorError(`${op}: bad shape [${shape.join(', ')}]`);
  }
  return [...shape];
}

export function zeros(shape: Shape, opts?: CreateOptions): Tensor {
  return finish(call('zeros', [checkShape('zeros', shape), dtypeCode('zeros', opts?.dtype ?? 'float32')]), opts);
}
export function ones(shape: Shape, opts?: CreateOptions): Tensor {
  return finish(call('ones', [checkShape('ones', shape), dtypeCode('ones', opts?.dtype ?? 'float32')]), opts);
}
export function empty(shape: Shape, opts?: CreateOptions): Tensor {
  return finish(call('empty.memory_format', [checkShape('empty', shape), dtypeCode('empty', opts?.dtype ?? 'float32')]), opts);
}
export function full(shape: Shape, value: number, opts?: CreateOptions): Tensor {
  return finish(call('full', [checkShape('full', shape), value, dtypeCode('full', opts?.dtype ?? 'float32')]), opts);
}
/** Standard normal samples from the default (seeded) generator. */
export function randn(shape: Shape, opts?: CreateOptions): Tensor {
  return finish(call('randn', [checkShape('randn', shape), dtypeCode('randn', opts?.dtype ?? 'float32')]), opts);
}
/** Uniform [0, 1) samples. */
export function rand(shape: Shape, opts?: CreateOptions): Tensor {
  return finish(call('rand', [checkShape('rand', shape), dtypeCode('rand', opts?.dtype ?? 'float32')]), opts);
}
/** Integers uniform in [low, high). */
export function randint(low: number, high: number, shape: Shape, opts?: CreateOptions): Tensor {
  return call('randint.low', [low, high, checkShape('randint', shape), dtypeCode('randint', opts?.dtype ?? 'int64')]);
}
/** [start, end) by step; int64 unless a dtype is given or any bound is fractional. */
export function arange(start: number, end?: number, step = 1, opts?: CreateOptions): Tensor {
  if (end === undefined) {
    end = start;
    start = 0;
  }
  const frac = !Number.isInteger(start) || !Number.isInteger(end) || !Number.isInteger(step);
  const dtype = opts?.dtype ?? (frac ? 'float32' : 'int64');
  return finish(call('arange.start_step', [start, end, step, dtypeCode('arange', dtype)]), opts);
}
export function eye(n: number, opts?: CreateOptions): Tensor {
  return finish(call('eye', [n, dtypeCode('eye', opts?.dtype ?? 'float32')]), opts);
}
export function zerosLike(t: Tensor): Tensor {
  return call('zeros_like', [t]);
}
export function onesLike(t: Tensor): Tensor {
  return call('ones_like', [t]);
}

const ARRAY_DTYPE = new Map<unknown, DType>([
  [Float32Array, 'float32'],
  [Float64Array, 'float64'],
  [BigInt64Array, 'int64'],
  [Int32Array, 'int32'],
  [Int16Array, 'int16'],
  [Int8Array, 'int8'],
  [Uint8Array, 'uint8'],
]);

/**
 * A tensor from a typed array (its dtype follows the array unless given; a Uint16Array is taken
 * as raw float16 or bfloat16 bits) or from plain numbers (float32 unless dtype says otherwise).
 * The data is copied.
 */
export function tensor(data: AnyTypedArray | readonly number[] | readonly boolean[] | number, shape?: Shape, opts?: CreateOptions): Tensor {
  if (typeof data === 'number') return finish(full([], data, opts), opts);
  if (opts?.dtype !== undefined) dtypeCode('tensor', opts.dtype);
  let arr: AnyTypedArray;
  let dtype: DType;
  if (ArrayBuffer.isView(data)) {
    arr = data;
    if (data instanceof Uint16Array) {
      dtype = opts?.dtype ?? 'float16';
      if (dtype !== 'float16' && dtype !== 'bfloat16') throw new TensorError('tensor: a Uint16Array holds float16 or bfloat16 bits');
    } else {
      dtype = ARRAY_DTYPE.get(data.constructor) ?? 'float32';
      if (opts?.dtype === 'bool' && dtype === 'uint8') dtype = 'bool';
    }
  } else {
    dtype = opts?.dtype ?? (typeof data[0] === 'boolean' ? 'bool' : 'float32');
    const nums = (data as readonly (number | boolean)[]).map(Number);
    switch (dtype) {
      case 'float64':
        arr = Float64Array.from(nums);
        break;
      case 'int64':
        arr = BigInt64Array.from(nums, (x) => BigInt(Math.trunc(x)));
        break;
      case 'int32':
        arr = Int32Array.from(nums);
        break;
      case 'bool':
      case 'uint8':
        arr = Uint8Array.from(nums);
        break;
      default:
        arr = Float32Array.from(nums);
    }
  }
  const n = arr.length;
  const sh = shape ? checkShape('tensor', shape) : [n];
  if (sh.reduce((a, b) => a * b, 1) !== n) throw new TensorError(`tensor: ${n} values do not fill shape [${sh.join(', ')}]`);
  let t: Tensor;
  const natural = ArrayBuffer.isView(data) ? dtype : dtype === 'float16' || dtype === 'bfloat16' ? 'float32' : dtype;
  try {
    t = new Tensor(native.fromBuffer(arr, dtypeCode('tensor', natural), sh));
  } catch (e) {
    throw new TensorError(`tensor: ${(e as Error).message}`);
  }
  if (natural !== dtype) {
    const c = t.to(dtype);
    t.free();
    t = c;
  } else if (opts?.dtype && opts.dtype !== dtype) {
    const c = t.to(opts.dtype);
    t.free();
    t = c;
  }
  return finish(t, opts);
}

// ---- functions over several tensors ----------------------------------------------------------

export function cat(tensors: Tensor[], dim = 0): Tensor {
  return call('cat', [tensors, dim]);
}
export function stack(tensors: Tensor[], dim = 0): Tensor {
  return call('stack', [tensors, dim]);
}
export function where(condition: Tensor, a: TensorOrNumber, b: TensorOrNumber): Tensor {
  if (typeof a === 'number' && typeof b === 'number') return call('where.Scalar', [condition, a, b]);
  if (typeof a === 'number') return call('where.ScalarSelf', [condition, a, b]);
  if (typeof b === 'number') return call('where.ScalarOther', [condition, a, b]);
  return call('where.self', [condition, a, b]);
}
export function matmul(a: Tensor, b: Tensor): Tensor {
  return a.matmul(b);
}
export function bmm(a: Tensor, b: Tensor): Tensor {
  return a.bmm(b);
}

// ---- neural-network functions -------------------------------------------------------------------

/** Rows of `weight` [vocab, dim] picked by integer `indices` [...] -> [..., dim]. */
export function embedding(weight: Tensor, indices: Tensor): Tensor {
  return call('embedding', [weight, indices, -1, false, false]);
}
/**
 * x [..., in] @ weight[out, in]^T + bias[out] -> [..., out]. One row (batch-1 decoding) goes
 * through a matrix-vector product: OpenBLAS's general product with one row reads the weights
 * 3-5x slower here (SmolLM2's 1536x576 projection 700 vs 150 us, its 49152x576 head 30 vs 11 ms).
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  return fused('linear', bias ? [x, weight, bias] : [x, weight], () => native.linear(x.handle, weight.handle, bias ? bias.handle : null));
}
/**
 * A weight matrix [out, in] as block-affine 8-bit codes: each run of 32 weights of a row is
 * scale * code + offset, code 0..255 (native/src/quant.cc). 1.25 bytes per weight instead of 4.
 */
export interface BlockWeights {
  codes: Tensor; // uint8 [out, in]
  scale: Tensor; // float32 [out, in / 32]
  offset: Tensor; // float32 [out, in / 32]
}
/**
 * The block-affine 8-bit form of a float32 weight [out, in] when it reproduces every weight to
 * within `tolerance` times its block's largest magnitude, else null (also when in is not a
 * multiple of 32). Weights read from a block-quantized file (GGUF Q4_0, Q4_1, Q5_x, Q8_0: at
 * most 256 levels per 32 weights) pass at the default 1e-6; ordinary float weights do not.
 */
export function quantizeBlocks(weight: Tensor, tolerance = 1e-6): BlockWeights | null {
  let r: [Handle, Handle, Handle] | null;
  try {
    r = native.quantizeBlocks(weight.handle, tolerance);
  } catch (e) {
    throw new TensorError(`${(e as Error).message} (inputs: ${weight.describe()})`);
  }
  if (!r) return null;
  return { codes: new Tensor(r[0]), scale: new Tensor(r[1]), offset: new Tensor(r[2]) };
}
/** linear() of one float32 row x [..., in] over block-affine 8-bit weights, without autograd. */
export function blockLinear(x: Tensor, weight: BlockWeights, bias?: Tensor | null): Tensor {
  const inputs = bias ? [x, weight.codes, bias] : [x, weight.codes];
  return fused('blockLinear', inputs, () =>
    native.blockLinear(x.handle, weight.codes.handle, weight.scale.handle, weight.offset.handle, bias ? bias.handle : null),
  );
}
export interface CrossEntropyOptions {
  ignoreIndex?: number;
  reduction?: 'mean' | 'sum' | 'none';
  labelSmoothing?: number;
}
/** logits [N, C] (or [N, C, ...]) against integer targets [N] (or [N, ...]). */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  return call('cross_entropy_loss', [logits, targets, null, REDUCTION[opts.reduction ?? 'mean'], opts.ignoreIndex ?? -100, opts.labelSmoothing ?? 0]);
}
export function dropout(x: Tensor, p: number, train: boolean): Tensor {
  if (!train || p === 0) return x;
  return call('dropout', [x, p, train]);
}
export function layerNorm(x: Tensor, normalizedShape: number[], weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  return call('layer_norm', [x, normalizedShape, weight ?? null, bias ?? null, eps, false]);
}
/** x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in float32 for half types. */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  return fused('rmsNorm', [x, weight], () => native.rmsNorm(x.handle, weight.handle, eps));
}
/**
 * Rotary position embedding of x [..., hd] with cos/sin [..., hd/2] (broadcast against x's
 * leading dims), then times `scale` unless it is 1. Interleaved (llama2.c): dims (2j, 2j+1)
 * rotate together; otherwise (Hugging Face) dim j rotates with j + hd/2.
 */
export function rotary(x: Tensor, cos: Tensor, sin: Tensor, opts: { interleaved?: boolean; scale?: number } = {}): Tensor {
  return fused('rotary', [x, cos, sin], () => native.rotary(x.handle, cos.handle, sin.handle, opts.interleaved ?? false, opts.scale ?? 1));
}
/**
 * Grouped-query attention: softmax(q k^T + mask) v with q [B, heads, T, hd] (already scaled),
 * k/v [B, kvHeads, Tk, hd] (heads a multiple of kvHeads, each kv head shared by heads/kvHeads
 * query heads, without copying k/v) and an optional additive mask [B|1, 1, 1, T, Tk]. Returns
 * [B, T, heads * hd]. Half types take the softmax in float32.
 *
 * `causalOffset` c promises that the mask hides key j from query i whenever j > i + c (causal
 * attention after c visible prefix or cached keys; then Tk = c + T). Long inputs then skip the
 * products with hidden keys, query block by query block, for the same result.
 */
export function groupedAttention(q: Tensor, k: Tensor, v: Tensor, mask?: Tensor | null, causalOffset?: number): Tensor {
  return fused('groupedAttention', [q, k, v], () => native.groupedAttention(q.handle, k.handle, v.handle, mask ? mask.handle : null, causalOffset ?? null));
}
/**
 * softmax(q k^T * scale + mask) v with q [..., Lq, d], k/v [..., Lk, d]; attnMask is bool
 * (true = attend) or additive float, broadcastable to [..., Lq, Lk].
 */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: { attnMask?: Tensor | null; causal?: boolean; dropout?: number } = {},
): Tensor {
  // libtorch 2.x has the public operator (one output); 1.13 only the private one (output, weights).
  if (hasOp('scaled_dot_product_attention'))
    return call('scaled_dot_product_attention', [q, k, v, opts.attnMask ?? null, opts.dropout ?? 0, opts.causal ?? false]);
  const [out, weights] = callOp('_scaled_dot_product_attention', [
    q,
    k,
    v,
    opts.attnMask ?? null,
    opts.dropout ?? 0,
    false,
    opts.causal ?? false,
  ]) as (Tensor | null)[];
  weights?.free();
  return out!;
}

/** A tensor of `dtype` and `shape` from raw little-endian bytes (copied; any alignment). */
export function fromBytes(bytes: Uint8Array, dtype: DType, shape: Shape): Tensor {
  const sh = checkShape('fromBytes', shape);
  const code = dtypeCode('fromBytes', dtype);
  if (!(bytes instanceof Uint8Array)) throw new TensorError(`fromBytes: expected the bytes as a Uint8Array, got ${bytes === null ? 'null' : typeof bytes}`);
  try {
    return new Tensor(native.fromBuffer(bytes, code, sh));
  } catch (e) {
    throw new TensorError(`fromBytes: ${(e as Error).message}`);
  }
}

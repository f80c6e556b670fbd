/**
 * Scopes that free native memory deterministically. Every Tensor created while a scope is
 * open belongs to it; when the scope's function returns, every tensor it owns is freed except
 * those reachable from the return value (tensors, arrays, plain objects and Maps of them),
 * which move to the enclosing scope. On an exception everything the scope owns is freed.
 * Tensors created outside any scope (parameters, long-lived buffers) are freed by free() or
 * the garbage collector.
 */
import { native } from './native.js';
import type { Tensor } from './tensor.js';

type Scope = Set<Tensor>;
const scopes: Scope[] = [];
const owner = new WeakMap<Tensor, Scope>();

/** Registers a new tensor with the innermost scope, or (release) takes it out of its scope. */
export function track(t: Tensor, release = false): void {
  if (release) {
    owner.get(t)?.delete(t);
    owner.delete(t);
    return;
  }
  const s = scopes[scopes.length - 1];
  if (s) {
    s.add(t);
    owner.set(t, s);
  }
}

function collect(value: unknown, out: Set<Tensor>, seen: Set<unknown>, TensorClass: abstract new (...args: never[]) => unknown): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (value instanceof TensorClass) {
    out.add(value as Tensor);
    return;
  }
  if (Array.isArray(value)) {
    for (const v of value) collect(v, out, seen, TensorClass);
  } else if (value instanceof Map) {
    for (const v of value.values()) collect(v, out, seen, TensorClass);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, out, seen, TensorClass);
  }
}

let tensorClass: (abstract new (...args: never[]) => unknown) | undefined;
/** Set once by tensor.ts (avoids an import cycle at module evaluation). */
export function registerTensorClass(c: abstract new (...args: never[]) => unknown): void {
  tensorClass = c;
}

function close(scope: Scope, result: unknown): void {
  const keep = new Set<Tensor>();
  if (tensorClass) collect(result, keep, new Set(), tensorClass);
  const parent = scopes[scopes.length - 1];
  for (const t of scope) {
    if (keep.has(t)) {
      if (parent) {
        parent.add(t);
        owner.set(t, parent);
      } else owner.delete(t);
    } else {
      native.free(t.handle);
      owner.delete(t);
    }
  }
  scope.clear();
}

/** Runs fn in a new scope; see the module comment. */
export function tidy<T>(fn: () => T): T {
  const scope: Scope = new Set();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    close(scope, undefined);
    throw e;
  }
  scopes.pop();
  close(scope, result);
  return result;
}

/** tidy for async functions: the scope stays open across awaits, so do not interleave two. */
export async function tidyAsync<T>(fn: () => Promise<T>): Promise<T> {
  const scope: Scope = new Set();
  scopes.push(scope);
  const depth = scopes.length;
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    if (scopes.length !== depth) throw new Error('tidyAsync: scopes were interleaved across awaits');
    scopes.pop();
    close(scope, undefined);
    throw e;
  }
  if (scopes.length !== depth) throw new Error('tidyAsync: scopes were interleaved across awaits');
  scopes.pop();
  close(scope, result);
  return result;
}

/** Runs fn with autograd recording off (like torch.no_grad()). */
export function noGrad<T>(fn: () => T): T {
  const previous = native.setGradEnabled(false);
  try {
    return fn();
  } finally {
    native.setGradEnabled(previous);
  }
}

/** Runs fn with autograd recording on, e.g. inside a noGrad region. */
export function enableGrad<T>(fn: () => T): T {
  const previous = native.setGradEnabled(true);
  try {
    return fn();
  } finally {
    native.setGradEnabled(previous);
  }
}

export function isGradEnabled(): boolean {
  return native.isGradEnabled();
}

/** Native tensors alive and bytes reported to V8, for leak checks. */
export function memoryStats(): { liveHandles: number; reportedBytes: number } {
  return native.stats();
}

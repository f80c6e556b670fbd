/**
 * Module and Parameter: named, nested, freezable parameters with state dicts. Modules own
 * their parameters outside any scope (they live as long as the module).
 */
import { Tensor, noGrad, type DType } from '../tensor/index.js';

/** A trainable tensor slot. Replacing `value` (e.g. when loading) keeps the name stable. */
export class Parameter {
  value: Tensor;
  constructor(value: Tensor, trainable = true) {
    this.value = value.keep();
    this.value.setRequiresGrad(trainable && value.isFloatingPoint);
  }
  get trainable(): boolean {
    return this.value.requiresGrad;
  }
  set trainable(on: boolean) {
    this.value.setRequiresGrad(on);
  }
  /** Copies data in place (shapes must match), keeping autograd identity and trainability. */
  load(src: Tensor, name = 'parameter'): void {
    const want = this.value.shape;
    const got = src.shape;
    if (want.length !== got.length || want.some((d, i) => d !== got[i])) {
      throw new Error(`load ${name}: shape [${got.join(', ')}] does not match [${want.join(', ')}]`);
    }
    noGrad(() => this.value.copy_(src));
  }
}

export abstract class Module {
  private readonly params = new Map<string, Parameter>();
  private readonly children = new Map<string, Module>();
  /** Training mode (dropout on). */
  training = true;

  protected param(name: string, value: Tensor, trainable = true): Parameter {
    const p = new Parameter(value, trainable);
    this.params.set(name, p);
    return p;
  }
  protected module<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }
  /** Replaces a registered child (e.g. to wrap a Linear with LoRA). */
  protected replaceModule<M extends Module>(name: string, m: M): M {
    if (!this.children.has(name)) throw new Error(`replaceModule: no child '${name}'`);
    this.children.set(name, m);
    return m;
  }
  child(name: string): Module | undefined {
    return this.children.get(name);
  }

  /** All parameters with dotted names, depth first. */
  namedParameters(prefix = ''): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    for (const [n, p] of this.params) out.push([prefix + n, p]);
    for (const [n, c] of this.children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }
  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p);
  }
  trainableParameters(): Parameter[] {
    return this.parameters().filter((p) => p.trainable);
  }
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix.replace(/\.$/, ''), this]];
    for (const [n, c] of this.children) out.push(...c.namedModules(`${prefix}${n}.`));
    return out;
  }
  numParameters(trainableOnly = false): number {
    return (trainableOnly ? this.trainableParameters() : this.parameters()).reduce((a, p) => a + p.value.numel, 0);
  }

  train(on = true): this {
    for (const [, m] of this.namedModules()) m.training = on;
    return this;
  }
  eval(): this {
    return this.train(false);
  }
  /** Stops gradients for every parameter of this module (and children). */
  freeze(): this {
    for (const p of this.parameters()) p.trainable = false;
    return this;
  }
  unfreeze(): this {
    for (const p of this.parameters()) if (p.value.isFloatingPoint) p.trainable = true;
    return this;
  }
  zeroGrad(): void {
    for (const p of this.parameters()) p.value.zeroGrad();
  }

  /** Name -> tensor (the live parameter tensors; clone before mutating). */
  stateDict(): Map<string, Tensor> {
    return new Map(this.namedParameters().map(([n, p]) => [n, p.value]));
  }
  /**
   * Copies tensors into parameters by name. strict: every parameter must be given and every
   * given name must exist. Dtypes are converted to the parameter's.
   */
  loadStateDict(state: Map<string, Tensor>, opts: { strict?: boolean } = {}): { missing: string[]; unexpected: string[] } {
    const strict = opts.strict ?? true;
    const own = new Map(this.namedParameters());
    const missing = [...own.keys()].filter((n) => !state.has(n));
    const unexpected = [...state.keys()].filter((n) => !own.has(n));
    if (strict && (missing.length || unexpected.length)) {
      throw new Error(
        `loadStateDict: missing [${missing.slice(0, 8).join(', ')}${missing.length > 8 ? ', …' : ''}], unexpected [${unexpected.slice(0, 8).join(', ')}${unexpected.length > 8 ? ', …' : ''}]`,
      );
    }
    for (const [n, p] of own) {
      const src = state.get(n);
      if (!src) continue;
      if (src.dtype !== p.value.dtype) {
        const c = src.to(p.value.dtype);
        p.load(c, n);
        c.free();
      } else p.load(src, n);
    }
    return { missing, unexpected };
  }
  /**
   * Frees every parameter's native tensor now instead of at garbage collection (the module
   * cannot be used afterwards). A server that closes should give its memory back at once.
   */
  free(): void {
    for (const p of new Set(this.parameters())) p.value.free();
  }
  /** Converts every floating parameter to a dtype (e.g. float16 for storage). */
  toDtype(dtype: DType): this {
    for (const p of this.parameters()) {
      if (!p.value.isFloatingPoint || p.value.dtype === dtype) continue;
      const trainable = p.trainable;
      const c = noGrad(() => p.value.to(dtype)).keep();
      p.value.free();
      p.value = c;
      p.trainable = trainable;
    }
    return this;
  }
}

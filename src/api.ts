/**
 * The softpress library API: open a base model with a compressor, compress text into a soft
 * context (by ratio or budget), store and reload it, and ask questions about it (batched) or
 * stream a reply. The `softpress` CLI (`compress`, `ask`) is a user of this module.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { noGrad, tensor, tidy } from './tensor/index.js';
import { BatchDecode, type RowResult } from './serve/decoder.js';
import { loadModel } from './models/load.js';
import type { LlamaModel } from './models/llama.js';
import type { Tokenizer } from './models/tokenizer.js';
import { qaPromptFormat } from './models/chat.js';
import {
  contextPrefix,
  createCompressor,
  freeCompressor,
  freeSoftContext,
  isLearned,
  loadCompressor,
  loadSoftContext,
  saveSoftContext,
  type Budget,
  type Compressor,
  type SoftContext as RawSoftContext,
  type SoftContextMeta,
} from './compress/index.js';

/** Base class of every error softpress throws on purpose (bad options, files, state). */
export class SoftpressError extends Error {
  override name = 'SoftpressError';
}
/** An option is missing, contradictory or out of range. */
export class OptionsError extends SoftpressError {
  override name = 'OptionsError';
}
/** A model, compressor or context file cannot be read, or does not fit the open model. */
export class LoadError extends SoftpressError {
  override name = 'LoadError';
}
/** The object was used after `close()` / `free()`. */
export class ClosedError extends SoftpressError {
  override name = 'ClosedError';
}

/** How to build contexts: a trained compressor folder, or a strategy without weights. */
export type Method = 'full' | 'none' | 'truncate';

export interface OpenOptions {
  /**
   * The base model: a registry name (`smollm2-135m-instruct`, pulled into the cache), a Hugging
   * Face folder, or a GGUF file.
   */
  base: string;
  /** A trained compressor's folder (made by `softpress train` for this base). */
  compressor?: string;
  /** A strategy instead of a trained compressor: `full` (the text itself), `none`, `truncate`. */
  method?: Method;
}

/** Exactly one of `ratio` (context tokens per soft token, >= 1) or `budget` (soft tokens). */
export interface CompressOptions {
  ratio?: number;
  budget?: number;
}

export interface AskOptions {
  /** New tokens per answer at most (default 32). */
  maxTokens?: number;
  /** 0 (default) is greedy; above 0 samples. */
  temperature?: number;
  /** Seed for sampling. */
  seed?: number;
}

/** What {@link Softpress.askDetailed} returns. */
export interface AskResult {
  /** In the order of the questions; `tokens` counts the generated ids (stop token included). */
  answers: { question: string; answer: string; tokens: number }[];
  /** Reading the context and questions, and generating, in milliseconds. */
  prefillMs: number;
  decodeMs: number;
}

export interface StreamOptions extends AskOptions {
  /** New tokens at most (default 128). */
  maxTokens?: number;
}

/** @internal The compressor of a folder or a strategy name, and its default budget. */
export function openCompressor(model: LlamaModel, dir: string | undefined, method: string | undefined): { compressor: Compressor; defaultBudget?: Budget } {
  if ((dir === undefined) === (method === undefined))
    throw new OptionsError('give --compressor DIR (a trained compressor) or --method NAME (full, none, truncate), exactly one');
  if (dir !== undefined) {
    if (!existsSync(dir)) throw new LoadError(`compressor folder not found: ${dir}`);
    const compressor = loadCompressor(dir, model);
    let defaultBudget: Budget | undefined;
    try {
      const saved = JSON.parse(readFileSync(join(dir, 'compressor.json'), 'utf8')) as { training?: { ratios?: number[]; budgetTokens?: number } };
      if (saved.training?.ratios?.length) defaultBudget = { ratio: saved.training.ratios[0] };
      else if (saved.training?.budgetTokens !== undefined) defaultBudget = { tokens: saved.training.budgetTokens };
    } catch {
      // no training notes: the budget must be given
    }
    return { compressor, defaultBudget };
  }
  if (isLearned(method!)) throw new OptionsError(`'${method}' is a learned method: give --compressor DIR of a trained one (softpress train)`);
  const compressor = createCompressor(method!, model);
  return { compressor, defaultBudget: compressor.budgetFree ? { ratio: 1 } : undefined };
}

/** @internal Ids that end an answer: EOS and every token whose text holds a newline. */
export function answerStopIds(tok: Tokenizer): number[] {
  const ids = new Set<number>([tok.eos]);
  if (tok.vocabSize <= 300000) {
    for (let i = 0; i < tok.vocabSize; i++) if (tok.decode([i]).includes('\n')) ids.add(i);
  }
  return [...ids];
}

function toBudget(opts: CompressOptions, fallback: Budget | undefined): Budget {
  if (opts.ratio !== undefined && opts.budget !== undefined) throw new OptionsError('give ratio or budget, not both');
  if (opts.ratio !== undefined) {
    if (!Number.isFinite(opts.ratio) || opts.ratio < 1) throw new OptionsError(`ratio must be a number >= 1, got ${opts.ratio}`);
    return { ratio: opts.ratio };
  }
  if (opts.budget !== undefined) {
    if (!Number.isInteger(opts.budget) || opts.budget < 0) throw new OptionsError(`budget must be an integer >= 0, got ${opts.budget}`);
    return { tokens: opts.budget };
  }
  if (!fallback) throw new OptionsError('give { ratio } or { budget }: this compressor has no default');
  return fallback;
}

function checkMaxTokens(n: number): number {
  if (!Number.isInteger(n) || n < 1) throw new OptionsError(`maxTokens must be an integer >= 1, got ${n}`);
  return n;
}

/** Runs a step generator to its end and returns its result. */
async function drain<T>(steps: AsyncGenerator<void, T, undefined>): Promise<T> {
  for (;;) {
    const step = await steps.next();
    if (step.done) return step.value;
  }
}

/**
 * A compressed context: soft tokens (or memory) standing in for a text, made for one base model.
 * Store it with {@link SoftContext.save}, reload it with {@link SoftContext.load}; free it with
 * {@link SoftContext.free} (or `using`).
 */
export class SoftContext implements Disposable {
  #raw: RawSoftContext | undefined;

  /** @internal */
  constructor(raw: RawSoftContext) {
    if (raw.meta.sourceTokens.length !== 1) throw new LoadError(`a context holds one text; this one holds ${raw.meta.sourceTokens.length}`);
    this.#raw = raw;
  }

  /** The underlying soft tokens or memory (the lower layers' `SoftContext`, from `softpress/compress`). */
  get raw(): RawSoftContext {
    if (!this.#raw) throw new ClosedError('this context was freed');
    return this.#raw;
  }

  /** The method that made it (e.g. `truncate`, `comprexit`). */
  get method(): string {
    return this.raw.meta.method;
  }
  /** Tokens of the original text. */
  get sourceTokens(): number {
    return this.raw.meta.sourceTokens[0];
  }
  /** Soft tokens (or memory slots per layer) standing in for it. */
  get softTokens(): number {
    return this.raw.meta.softTokens[0];
  }
  /** Everything recorded about it: method, budget, sizes, the base model's fingerprint. */
  get meta(): Readonly<SoftContextMeta> {
    return this.raw.meta;
  }

  /** Writes it as a `.softctx` file (safetensors). */
  async save(path: string): Promise<void> {
    saveSoftContext(path, this.raw);
  }

  /**
   * Reads a `.softctx` file. Pass the open {@link Softpress} to check that it was made for that
   * base model (else the check happens at `ask`/`stream`).
   */
  static async load(path: string, sp?: Softpress): Promise<SoftContext> {
    if (!existsSync(path)) throw new LoadError(`file not found: ${path}`);
    try {
      return new SoftContext(loadSoftContext(path, sp?.model));
    } catch (e) {
      if (e instanceof SoftpressError) throw e;
      throw new LoadError((e as Error).message);
    }
  }

  /** Frees its tensors now; the context cannot be used afterwards. */
  free(): void {
    if (this.#raw) freeSoftContext(this.#raw);
    this.#raw = undefined;
  }
  [Symbol.dispose](): void {
    this.free();
  }
}

/**
 * A base model with one compressor. Open with {@link Softpress.open}, then
 * {@link Softpress.compress}, {@link Softpress.ask}, {@link Softpress.stream}; {@link Softpress.close}
 * (or `using`) frees the weights.
 *
 * Prompt formats (models/chat.ts, `qaPromptFormat`): `ask` puts each question as
 * `[lead][context]\nQuestion: q\nAnswer:`, where the lead is BOS for a base model and a one-shot
 * demonstration for an instruct model; an answer ends at a newline. `stream` reads a free
 * instruction after the same lead and context, `[lead][context]\n{prompt}\n`, and runs until EOS,
 * the end of a chat turn, or `maxTokens`.
 *
 * Model work runs on the calling thread, one decoder forward at a time; `ask` and `stream` give
 * the event loop a turn between forwards, so timers and I/O go on while they generate. A
 * compression is one forward of the compressor and holds the thread until it ends.
 */
export class Softpress implements Disposable {
  #model: LlamaModel | undefined;
  #compressor: Compressor | undefined;
  readonly #tokenizer: Tokenizer;
  readonly #defaultBudget: Budget | undefined;
  #stops: number[] | undefined;

  private constructor(model: LlamaModel, tokenizer: Tokenizer, compressor: Compressor, defaultBudget: Budget | undefined) {
    this.#model = model;
    this.#tokenizer = tokenizer;
    this.#compressor = compressor;
    this.#defaultBudget = defaultBudget;
  }

  /** Loads the base model and the compressor (exactly one of `compressor` or `method`). */
  static async open(opts: OpenOptions): Promise<Softpress> {
    if (!opts || typeof opts.base !== 'string' || opts.base === '') throw new OptionsError('open: give { base }');
    let loaded;
    try {
      loaded = loadModel(opts.base);
    } catch (e) {
      throw new LoadError((e as Error).message);
    }
    if (!loaded.tokenizer) {
      loaded.model.free();
      throw new LoadError(`${opts.base}: no tokenizer next to the model`);
    }
    try {
      const { compressor, defaultBudget } = openCompressor(loaded.model, opts.compressor, opts.method);
      return new Softpress(loaded.model, loaded.tokenizer, compressor, defaultBudget);
    } catch (e) {
      loaded.model.free();
      if (e instanceof SoftpressError) throw e;
      throw new LoadError((e as Error).message);
    }
  }

  /** The base model (the lower layers' `LlamaModel`, from `softpress/models`), for advanced use. */
  get model(): LlamaModel {
    if (!this.#model) throw new ClosedError('this Softpress was closed');
    return this.#model;
  }
  /** The base model's tokenizer. */
  get tokenizer(): Tokenizer {
    return this.#tokenizer;
  }
  /** The compressor's method name. */
  get method(): string {
    return this.#comp().method;
  }
  /** The budget used when `compress` is given neither ratio nor budget, if the compressor has one. */
  get defaultBudget(): Readonly<Budget> | undefined {
    return this.#defaultBudget;
  }
  /** Tokens of a text under this model's tokenizer. */
  countTokens(text: string): number {
    return this.#tokenizer.encode(text).length;
  }

  #comp(): Compressor {
    if (!this.#compressor) throw new ClosedError('this Softpress was closed');
    return this.#compressor;
  }

  /** Compresses a text into a soft context at a ratio or a budget of soft tokens. */
  async compress(text: string, opts: CompressOptions = {}): Promise<SoftContext> {
    if (typeof text !== 'string' || text.trim() === '') throw new OptionsError('compress: the text is empty');
    const compressor = this.#comp();
    const budget = toBudget(opts, this.#defaultBudget);
    const ids = this.#tokenizer.encode(text);
    return new SoftContext(noGrad(() => compressor.compress([ids], budget)));
  }

  #check(ctx: SoftContext): RawSoftContext {
    const raw = ctx.raw;
    if (raw.meta.baseFingerprint !== this.model.fingerprint())
      throw new LoadError(`this context was made for base model ${raw.meta.baseFingerprint}, not the open one (${this.model.fingerprint()})`);
    if (raw.meta.method !== this.method) throw new LoadError(`this context was made by '${raw.meta.method}', the open compressor is '${this.method}'`);
    return raw;
  }

  /** Answers one question about a context (greedy by default). */
  async ask(ctx: SoftContext, question: string, opts?: AskOptions): Promise<string>;
  /** Answers several questions about a context in one batched generation. */
  async ask(ctx: SoftContext, questions: readonly string[], opts?: AskOptions): Promise<string[]>;
  async ask(ctx: SoftContext, questions: string | readonly string[], opts: AskOptions = {}): Promise<string | string[]> {
    const result = await this.askDetailed(ctx, typeof questions === 'string' ? [questions] : questions, opts);
    const answers = result.answers.map((a) => a.answer);
    return typeof questions === 'string' ? answers[0] : answers;
  }

  /** Like {@link Softpress.ask} for a list, with each answer's token count and the timings. */
  async askDetailed(ctx: SoftContext, questions: readonly string[], opts: AskOptions = {}): Promise<AskResult> {
    const list = [...questions];
    if (list.length === 0) throw new OptionsError('ask: give at least one question');
    if (list.some((q) => typeof q !== 'string' || q.trim() === '')) throw new OptionsError('ask: a question is empty');
    const maxTokens = checkMaxTokens(opts.maxTokens ?? 32);
    const raw = this.#check(ctx);
    const tok = this.#tokenizer;
    const format = qaPromptFormat(tok);
    this.#stops ??= [...new Set([...answerStopIds(tok), ...format.stopIds])];
    const results = await drain(
      this.#decode(
        raw,
        list.map((q) => format.tail(q)),
        { ...opts, maxTokens },
        new Set(this.#stops),
      ),
    );
    return {
      answers: results.map((r, i) => ({ question: list[i], answer: tok.decode(r.tokens).split('\n')[0].trim(), tokens: r.tokens.length })),
      prefillMs: Math.max(...results.map((r) => r.prefillMs)),
      decodeMs: Math.max(...results.map((r) => r.decodeMs)),
    };
  }

  /**
   * Streams a reply to an instruction about a context, piece by piece (decoded text), as the
   * tokens are generated. Breaking out of the loop stops the generation and frees its cache.
   */
  async *stream(ctx: SoftContext, prompt: string, opts: StreamOptions = {}): AsyncGenerator<string, void, undefined> {
    if (typeof prompt !== 'string' || prompt.trim() === '') throw new OptionsError('stream: the prompt is empty');
    const maxTokens = checkMaxTokens(opts.maxTokens ?? 128);
    const raw = this.#check(ctx);
    const tok = this.#tokenizer;
    const stopTokens = new Set(qaPromptFormat(tok).stopIds);
    const ids: number[] = [];
    let emitted = '';
    const steps = this.#decode(raw, [tok.encode(`\n${prompt}\n`)], { ...opts, maxTokens }, stopTokens, (_row, id) => {
      if (!stopTokens.has(id)) ids.push(id);
    });
    for (;;) {
      const step = await steps.next();
      const text = tok.decode(ids);
      // A piece that ends inside a multi-byte character waits for the token that completes it.
      if (text.length > emitted.length && (step.done || !text.endsWith('\uFFFD'))) {
        yield text.slice(emitted.length);
        emitted = text;
      }
      if (step.done) return;
    }
  }

  /**
   * Generates after [lead][context][prompt] for each prompt, in one batch, one decoder forward
   * (a prefill chunk or a decode step) per iteration; the caller awaits between iterations, so
   * the event loop runs between forwards. Returns each row's result, in order.
   */
  async *#decode(
    raw: RawSoftContext,
    prompts: number[][],
    opts: AskOptions & { maxTokens: number },
    stopTokens: ReadonlySet<number>,
    onToken?: (row: number, id: number) => void,
  ): AsyncGenerator<void, RowResult[], undefined> {
    const model = this.model;
    const lead = qaPromptFormat(this.#tokenizer).lead;
    // [lead][soft tokens] as [P, dim], real positions only (a stored row may carry padding).
    const prefix = noGrad(() =>
      tidy(() => {
        const { embeds, mask } = contextPrefix(model, raw, lead); // [1, P', dim], [1, P']
        const flat = embeds.reshape(embeds.size(1), model.dim);
        const keep: number[] = [];
        mask
          .reshape(-1)
          .toArray()
          .forEach((v, i) => v && keep.push(i));
        return keep.length === flat.size(0) ? flat : flat.indexSelect(0, tensor(keep, [keep.length], { dtype: 'int64' }));
      }),
    ).keep();
    const results: RowResult[] = [];
    let failure: Error | undefined;
    let batch: BatchDecode;
    try {
      batch = new BatchDecode(
        model,
        prompts.map((prompt, i) => ({
          prefix,
          memory: raw.memoryKv,
          prompt,
          maxTokens: opts.maxTokens,
          temperature: opts.temperature ?? 0,
          seed: (opts.seed ?? 0) + i,
          stopTokens,
          onToken: onToken && ((id: number) => onToken(i, id)),
          onDone: (r: RowResult) => (results[i] = r),
          onError: (e: Error) => (failure = e),
        })),
        { lora: this.#comp().decoderLora },
      );
    } finally {
      prefix.free();
    }
    try {
      while (batch.tick()) {
        if (failure) throw failure;
        yield;
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      if (failure) throw failure;
      return results;
    } finally {
      batch.free();
    }
  }

  /** Frees the model and compressor. */
  close(): void {
    if (this.#compressor) freeCompressor(this.#compressor);
    this.#model?.free();
    this.#compressor = undefined;
    this.#model = undefined;
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

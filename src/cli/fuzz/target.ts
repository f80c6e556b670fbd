/**
 * What the fuzzer runs: one Target per parser a user can feed. A target builds its seeds once
 * per worker process, makes the input of case i from a seeded RNG (so any case can be replayed
 * from the run seed, the target name and its index), runs the parser on it, and says whether an
 * error it threw is a clean rejection: an instance of a named error class (not a bare Error,
 * TypeError, RangeError...) whose message names the file (or the request field) at fault.
 */
import type { Rng } from './mutate.js';

export type Outcome = 'accepted' | 'clean' | 'raw';

export interface Prepared {
  /** The input of one case. */
  make(rng: Rng): unknown;
  /** Runs the parser (and a light use of what it returns); throws what the parser throws. */
  run(input: unknown): Promise<Outcome | void> | Outcome | void;
  /** Whether an error thrown by run() is a clean rejection. */
  clean(e: unknown): boolean;
  /** The input as bytes, to save a failing case to a file. */
  bytes(input: unknown): Uint8Array;
  close?(): Promise<void>;
}

export interface Target {
  name: string;
  /** What it parses, for the table. */
  about: string;
  /** A case running longer than this is a hang. */
  timeoutMs: number;
  prepare(tmp: string): Promise<Prepared> | Prepared;
}

/** Error names that are not a parser's own: what a missed check throws. */
const RAW_NAMES = new Set(['Error', 'TypeError', 'RangeError', 'SyntaxError', 'ReferenceError', 'EvalError', 'URIError', 'AggregateError', 'InternalError']);

/**
 * A clean rejection: a named error class (its constructor is not a built-in error) whose message
 * names `source` (the file or buffer name the case was given under).
 */
export function isNamedErrorWith(e: unknown, source: string): boolean {
  if (!(e instanceof Error)) return false;
  const ctor = (e as { constructor?: { name?: string } }).constructor?.name ?? '';
  return !RAW_NAMES.has(e.name) && !RAW_NAMES.has(ctor) && e.message.includes(source);
}

/** A one-line description of anything thrown. */
export function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.constructor?.name ?? e.name}: ${e.message.slice(0, 300)}`;
  return `non-error thrown: ${String(e).slice(0, 300)}`;
}

/** The targets by name, loaded on demand (the server's and .softctx's load libtorch). */
export const TARGETS: Record<string, { about: string; load: () => Promise<Target> }> = {
  safetensors: { about: 'safetensors (io/safetensors.ts)', load: async () => (await import('./targets-files.js')).safetensors },
  gguf: { about: 'GGUF header, metadata, tensors (io/gguf.ts)', load: async () => (await import('./targets-files.js')).gguf },
  'gguf-tokenizer': {
    about: "a GGUF's tokenizer (io/gguf-tokenizer.ts + HfTokenizer)",
    load: async () => (await import('./targets-tokenizers.js')).ggufTokenizerTarget,
  },
  'llama2c-checkpoint': { about: 'llama2.c checkpoints (io/llama2c.ts)', load: async () => (await import('./targets-files.js')).llama2cCheckpoint },
  'llama2c-tokenizer': { about: 'llama2.c tokenizer.bin (io/llama2c.ts)', load: async () => (await import('./targets-files.js')).llama2cTokenizer },
  'tokenizer-json-hf': {
    about: 'tokenizer.json via HfTokenizer (models/hf-tokenizer.ts)',
    load: async () => (await import('./targets-tokenizers.js')).hfTokenizerTarget,
  },
  'tokenizer-json-bpe': {
    about: 'tokenizer.json via BpeTokenizer (models/bpe.ts)',
    load: async () => (await import('./targets-tokenizers.js')).bpeTokenizerTarget,
  },
  softctx: { about: '.softctx (compress/softctx.ts parseSoftContext)', load: async () => (await import('./targets-files.js')).softctx },
  'chat-template': { about: 'chat templates (models/chat.ts renderTemplate)', load: async () => (await import('./targets-chat.js')).chatTemplate },
  'server-json': { about: "the server's JSON bodies (serve/*)", load: async () => (await import('./targets-server.js')).serverJson },
};

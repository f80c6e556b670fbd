/**
 * The one tokenizer interface the rest of softpress uses. Implementations: byte-level BPE
 * from a Hugging Face tokenizer.json (src/models/bpe.ts) and llama2.c's tokenizer .bin
 * (src/io/llama2c.ts).
 */
export interface Tokenizer {
  /** Number of ids (including special tokens). */
  readonly vocabSize: number;
  /** Beginning-of-sequence id. */
  readonly bos: number;
  /** End-of-sequence id. */
  readonly eos: number;
  /** Padding id (may equal eos when the vocabulary has no pad token). */
  readonly pad: number;
  /** Named special tokens (e.g. "<|restate|>") to their ids. */
  readonly special: ReadonlyMap<string, number>;
  /**
   * Whether a sequence starts with BOS for this model (default true). SmolLM2, for one, has a
   * BOS id but is trained without it: `encode(text, { bos: true })` then adds nothing.
   */
  readonly addsBos?: boolean;
  /** The model's own chat template (Jinja), when it has one (see models/chat.ts). */
  readonly chatTemplate?: string;
  /**
   * Text to ids; `bos: true` marks the start of a sequence (BOS is added when addsBos), EOS is
   * added only when asked; special-token strings are text unless allowSpecial.
   */
  encode(text: string, opts?: { bos?: boolean; eos?: boolean; allowSpecial?: boolean }): number[];
  /** Ids to text; special tokens are dropped unless keepSpecial. */
  decode(ids: readonly number[], opts?: { keepSpecial?: boolean }): string;
}

/**
 * Text around generation: incremental detokenization with stop strings (for streaming), answer
 * lines, vocabulary facts and tokenizing long texts without blocking. The chat and QA prompt
 * formats are the model's own (src/models/chat.ts: renderChat, qaPromptFormat).
 */
import type { Tokenizer } from '../models/tokenizer.js';
import { formatQAPrompt } from '../data/qa.js';

/**
 * Turns generated ids into text deltas. Holds back text that may still change: a trailing
 * partial UTF-8 character (decoded as U+FFFD) and any tail that could be the start of a stop
 * string. When a stop string appears, the text ends before it.
 */
export class TextStream {
  private readonly ids: number[] = [];
  private emitted = '';
  private finalText: string | null = null;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly stops: readonly string[] = [],
  ) {}

  /** Adds a token; returns the new safe text and whether a stop string was reached. */
  push(id: number): { delta: string; stopped: boolean } {
    if (this.finalText !== null) return { delta: '', stopped: true };
    this.ids.push(id);
    const full = this.tokenizer.decode(this.ids);
    let cut = -1;
    for (const s of this.stops) {
      const i = full.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.finalText = full.slice(0, cut);
      return { delta: this.take(this.finalText), stopped: true };
    }
    let safe = full.replace(/\uFFFD+$/, '');
    let hold = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, safe.length); n > hold; n--) {
        if (safe.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    if (hold) safe = safe.slice(0, safe.length - hold);
    return { delta: this.take(safe), stopped: false };
  }

  /** The rest of the text once generation has ended (flushes held-back text). */
  finish(): string {
    if (this.finalText === null) this.finalText = this.tokenizer.decode(this.ids);
    return this.take(this.finalText);
  }

  /** The whole text (after finish: exactly what was emitted in total). */
  get text(): string {
    return this.finalText ?? this.emitted;
  }

  private take(upTo: string): string {
    if (!upTo.startsWith(this.emitted) || upTo.length <= this.emitted.length) return '';
    const delta = upTo.slice(this.emitted.length);
    this.emitted = upTo;
    return delta;
  }
}

/**
 * A base model's QA prompt read after a soft context: formatQAPrompt with an empty context (the
 * same text as qaPromptFormat's tail). The server itself asks through qaPromptFormat, whose lead
 * depends on the model; this stays for callers that only need the prompt's length.
 */
export function qaPrompt(question: string): string {
  return formatQAPrompt({ context: '', question });
}

/** The first line of a generated answer, trimmed. */
export function answerText(generated: string): string {
  return generated.split('\n')[0].trim();
}

/**
 * Facts about a vocabulary: ids whose text contains a newline (a QA answer ends at the first),
 * and the longest token in characters (a text of n characters has at least n / that many
 * tokens, so an over-long text can be refused before tokenizing it).
 */
export function vocabularyFacts(tokenizer: Tokenizer): { newlineIds: number[]; maxTokenChars: number } {
  const newlineIds: number[] = [];
  let maxTokenChars = 1;
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    let s: string;
    try {
      s = tokenizer.decode([id], { keepSpecial: true });
    } catch {
      continue;
    }
    if (s.includes('\n')) newlineIds.push(id);
    if (s.length > maxTokenChars) maxTokenChars = s.length;
  }
  return { newlineIds, maxTokenChars };
}

/**
 * Tokenizes a long text in pieces of about `piece` characters, yielding to the event loop
 * between pieces (tokenizing 1 MB takes over a second here). Pieces are cut just before a
 * space that follows a non-space character: with a byte-level (GPT-2 style) pre-tokenizer no
 * pre-token spans such a point, so the ids equal those of encoding the whole text at once.
 */
export async function encodeYielding(tokenizer: Tokenizer, text: string, piece = 16384): Promise<number[]> {
  if (text.length <= piece) return tokenizer.encode(text);
  const out: number[] = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(text.length, start + piece);
    if (end < text.length) {
      let cut = end;
      while (cut > start && !(text[cut] === ' ' && !/\s/.test(text[cut - 1]))) cut--;
      end = cut > start ? cut : end; // no safe point: cut anywhere (rare: no spaces in 16k chars)
    }
    for (const id of tokenizer.encode(text.slice(start, end))) out.push(id);
    start = end;
    if (start < text.length) await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return out;
}

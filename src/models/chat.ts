/**
 * Chat prompts: a model's own chat template (the Jinja `chat_template` of its tokenizer config or
 * GGUF metadata, rendered with @huggingface/jinja, as transformers and llama.cpp do), or plain
 * "User: ...\nAssistant:" lines for a model that has none (a base model such as softpress-base).
 */
import * as jinja from '@huggingface/jinja';
import { Template } from '@huggingface/jinja';
import type { Tokenizer } from './tokenizer.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'developer' | 'tool';
  content: string | null | { type: string; text?: string }[];
}

/** Plain-text content of a message; throws on non-text parts. */
export function messageText(m: ChatMessage): string {
  if (m.content === null || m.content === undefined) return '';
  if (typeof m.content === 'string') return m.content;
  return m.content
    .map((p, i) => {
      if (p.type !== 'text' || typeof p.text !== 'string') throw new Error(`messages: content part ${i} has type '${p.type}'; only text parts are supported`);
      return p.text;
    })
    .join('');
}

const ROLE_LABEL: Record<ChatMessage['role'], string> = { system: 'System', developer: 'System', user: 'User', assistant: 'Assistant', tool: 'Tool' };

/** Where a plain-lines chat's assistant turn ends. */
export const PLAIN_CHAT_STOPS = ['\nUser:', '\nSystem:'];

/** Renders a chat as plain text lines ("User: ...\nAssistant: ...") ending with "Assistant:". */
export function renderPlainChat(messages: readonly ChatMessage[]): string {
  const lines = messages.map((m) => `${ROLE_LABEL[m.role]}: ${messageText(m).trim()}`);
  lines.push('Assistant:');
  return lines.join('\n');
}

/** Tokens that end a turn in the chat formats we know. */
const END_OF_TURN = ['<|im_end|>', '<|eot_id|>', '<|end|>', '<end_of_turn>', '<|endoftext|>'];

const compiled = new Map<string, Template>();

/** A chat template refused or stopped: unparsable, too large, or rendering past a limit. Its message starts with "chat template". */
export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(`chat template: ${message}`);
    this.name = 'ChatTemplateError';
  }
}

/**
 * Bounds on one rendering of a chat template. A template comes with the model file (a GGUF's
 * tokenizer.chat_template, a tokenizer_config.json): untrusted input that could loop for ever
 * (`{% for i in range(10**9) %}`, nested loops) or build huge strings. Real chat templates take
 * a few thousand steps and well under a millisecond per message.
 */
export interface TemplateLimits {
  /** Wall time of one rendering, ms. */
  timeMs: number;
  /** Interpreter steps (expressions evaluated, blocks and loop bodies rendered). */
  steps: number;
  /** Characters of any one value or block, and of the output; at least 4x the messages' text is allowed. */
  chars: number;
  /** Items of any one list, and of a range(). */
  items: number;
  /** Characters of the template's source. */
  sourceChars: number;
}

export const TEMPLATE_LIMITS: Readonly<TemplateLimits> = { timeMs: 2000, steps: 2_000_000, chars: 1 << 20, items: 100_000, sourceChars: 1 << 20 };

/** A chat template, parsed once per distinct text. */
function template(source: string, limits: TemplateLimits): Template {
  let t = compiled.get(source);
  if (!t) {
    if (source.length > limits.sourceChars) throw new ChatTemplateError(`the template has ${source.length} characters, more than the limit of ${limits.sourceChars}`);
    try {
      t = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`cannot parse it (${(e as Error).message})`);
    }
    compiled.set(source, t);
  }
  return t;
}

type Value = { type: string; value: unknown };
type Program = Template['parsed'];
/** The library's runtime classes (its declarations name them from a path that ESM resolution does not follow). */
interface Environment {
  set(name: string, value: unknown): unknown;
}
interface InterpreterLike {
  run(program: Program): Value;
  evaluate(statement: unknown, environment: Environment): Value;
}
const { Environment, Interpreter } = jinja as unknown as {
  Environment: new () => Environment;
  Interpreter: new (env: Environment) => InterpreterLike;
};
type Hooks = {
  renderBlock(statements: unknown, env: Environment): string;
  evaluateArguments(args: unknown, env: Environment): [Value[], Map<string, Value>];
};

const BASE = Interpreter.prototype as unknown as Partial<Hooks>;

/**
 * The library's interpreter with every step counted and every value measured: it stops with a
 * ChatTemplateError when a rendering runs past its time or step budget, when a string, block,
 * list or the text produced so far grows past its limit, or when a call is given an integer
 * argument larger than the character limit (`x|indent(10**9)` would allocate before any check).
 */
class BoundedInterpreter extends Interpreter {
  private steps = 0;
  private produced = 0;
  private readonly deadline: number;
  constructor(
    env: Environment,
    readonly limits: TemplateLimits,
  ) {
    super(env);
    this.deadline = performance.now() + limits.timeMs;
  }
  /** Counts a step; checks the clock every 1024 steps. */
  step(): void {
    if (++this.steps > this.limits.steps) throw new ChatTemplateError(`rendering stopped after ${this.limits.steps} steps (a loop without a bound?)`);
    if ((this.steps & 1023) === 0 && performance.now() > this.deadline) {
      throw new ChatTemplateError(`rendering stopped after ${this.limits.timeMs} ms (${this.steps} steps; a loop without a bound?)`);
    }
  }
  /** Refuses a value past the size limits. */
  measure<T extends Value>(v: T): T {
    if (v && typeof v.value === 'string' && v.value.length > this.limits.chars) {
      throw new ChatTemplateError(`rendering stopped: a string of ${v.value.length} characters, more than the limit of ${this.limits.chars}`);
    }
    if (v && Array.isArray(v.value) && v.value.length > this.limits.items) {
      throw new ChatTemplateError(`rendering stopped: a list of ${v.value.length} items, more than the limit of ${this.limits.items}`);
    }
    return v;
  }
  /** Counts text rendered by a block (nested blocks count again: the budget is 8x the character limit). */
  block(s: string): string {
    this.step();
    this.produced += s.length;
    if (s.length > this.limits.chars || this.produced > 8 * this.limits.chars) {
      throw new ChatTemplateError(`rendering stopped: it produced more than ${this.limits.chars} characters`);
    }
    return s;
  }
  override evaluate(statement: unknown, environment: Environment): Value {
    this.step();
    return this.measure(super.evaluate(statement, environment));
  }
}

if (typeof BASE.renderBlock !== 'function' || typeof BASE.evaluateArguments !== 'function') {
  // the bounds below hook these; a version of @huggingface/jinja without them must not render unbounded
  throw new Error('models/chat.ts: @huggingface/jinja has no Interpreter.renderBlock / evaluateArguments; chat templates cannot be bounded');
}
const renderBlock = BASE.renderBlock;
const evaluateArguments = BASE.evaluateArguments;
const HOOKED = BoundedInterpreter.prototype as unknown as Hooks;
HOOKED.renderBlock = function (this: BoundedInterpreter, statements, env) {
  return this.block(renderBlock.call(this, statements, env));
};
HOOKED.evaluateArguments = function (this: BoundedInterpreter, args, env) {
  const out = evaluateArguments.call(this, args, env);
  for (const v of [...out[0], ...out[1].values()]) {
    if (v && typeof v.value === 'number' && Math.abs(v.value) > this.limits.chars) {
      throw new ChatTemplateError(`rendering stopped: an argument of ${v.value} (more than the limit of ${this.limits.chars})`);
    }
  }
  return out;
};

/** Jinja's range(), refusing more than `items` numbers before making any. */
function boundedRange(items: number) {
  return (start: number, stop?: number, step = 1): number[] => {
    if (stop === undefined) [start, stop] = [0, start];
    if (![start, stop, step].every((x) => typeof x === 'number' && Number.isFinite(x))) throw new ChatTemplateError('range() takes finite numbers');
    if (step === 0) throw new ChatTemplateError('range() step must not be zero');
    const n = Math.max(0, Math.ceil((stop - start) / step));
    if (n > items) throw new ChatTemplateError(`range() of ${n} numbers, more than the limit of ${items}`);
    return Array.from({ length: n }, (_, i) => start + i * step);
  };
}

const MONTHS_SHORT = new Intl.DateTimeFormat(undefined, { month: 'short' });
const MONTHS_LONG = new Intl.DateTimeFormat(undefined, { month: 'long' });

/** strftime_now(format) as @huggingface/jinja has it (%Y %m %d %b %B %H %M %%): Llama 3's templates date their system prompt. */
function strftimeNow(format: string): string {
  const d = new Date();
  const pad2 = (n: number) => String(n).padStart(2, '0');
  return String(format).replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y':
        return String(d.getFullYear());
      case '%m':
        return pad2(d.getMonth() + 1);
      case '%d':
        return pad2(d.getDate());
      case '%b':
        return MONTHS_SHORT.format(d);
      case '%B':
        return MONTHS_LONG.format(d);
      case '%H':
        return pad2(d.getHours());
      case '%M':
        return pad2(d.getMinutes());
      default:
        return '%';
    }
  });
}

/**
 * Renders a chat template under limits (TEMPLATE_LIMITS; `chars` and `items` grow with the
 * input: at least 4x the characters of its strings, 4x its messages). Throws ChatTemplateError.
 */
export function renderTemplate(source: string, items: Record<string, unknown>, limits: Partial<TemplateLimits> = {}): string {
  let inputChars = 0;
  let messages = 0;
  const walk = (v: unknown, depth: number): void => {
    if (typeof v === 'string') inputChars += v.length;
    else if (Array.isArray(v)) {
      messages += v.length;
      if (depth < 4) for (const x of v) walk(x, depth + 1);
    } else if (v && typeof v === 'object' && depth < 4) for (const x of Object.values(v)) walk(x, depth + 1);
  };
  walk(items, 0);
  const lim: TemplateLimits = { ...TEMPLATE_LIMITS, ...limits };
  lim.chars = Math.max(lim.chars, 4 * inputChars);
  lim.items = Math.max(lim.items, 4 * messages);
  const t = template(source, lim);
  // the globals of the library's Template.render, with a bounded range()
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    raise_exception: (msg: unknown) => {
      throw new Error(String(msg));
    },
    range: boundedRange(lim.items),
    strftime_now: strftimeNow,
  };
  let out: Value;
  try {
    for (const [k, v] of Object.entries({ ...globals, ...items })) env.set(k, v);
    out = new BoundedInterpreter(env, lim).run(t.parsed);
  } catch (e) {
    if (e instanceof ChatTemplateError) throw e;
    throw new ChatTemplateError(`rendering failed (${(e as Error)?.message ?? String(e)})`);
  }
  return String(out.value);
}

/** The tokens' text of an id, for template variables (bos_token, eos_token). */
function tokenText(tokenizer: Tokenizer, id: number): string {
  for (const [name, i] of tokenizer.special) if (i === id) return name;
  return '';
}

export interface RenderedChat {
  /** The prompt text (special tokens as text: encode it with allowSpecial). */
  text: string;
  /** Strings that end the assistant's turn in text (besides the tokenizer's end-of-turn ids). */
  stops: string[];
  /** Ids that end the assistant's turn. */
  stopIds: number[];
  /** Whether the model's own template was used (else plain lines). */
  templated: boolean;
}

/**
 * The prompt for a chat, ready for the assistant's reply (add_generation_prompt). With the
 * model's template, the turn ends at EOS (for ChatML, <|im_end|>); with plain lines, at the next
 * "User:" or "System:" line.
 */
export function renderChat(tokenizer: Tokenizer, messages: readonly ChatMessage[]): RenderedChat {
  if (messages.length === 0) throw new Error('messages: give at least one message');
  if (!tokenizer.chatTemplate) return { text: renderPlainChat(messages), stops: PLAIN_CHAT_STOPS, stopIds: [tokenizer.eos], templated: false };
  const plain = messages.map((m) => ({ role: m.role === 'developer' ? 'system' : m.role, content: messageText(m) }));
  const text = renderTemplate(tokenizer.chatTemplate, {
    messages: plain,
    add_generation_prompt: true,
    bos_token: tokenText(tokenizer, tokenizer.bos),
    eos_token: tokenText(tokenizer, tokenizer.eos),
  });
  return { text, stops: [], stopIds: [...new Set([tokenizer.eos, ...renderChatStopIds(tokenizer)])], templated: true };
}

/** One user turn rendered for the model (the common case: a single question). */
export function renderUserPrompt(tokenizer: Tokenizer, content: string): RenderedChat {
  return renderChat(tokenizer, [{ role: 'user', content }]);
}

/**
 * How a question about a context is put to the model, with the context in between so that a
 * compressor can stand in for it: `lead` tokens, then the context (tokens or soft tokens), then
 * `tail(question)` = "\nQuestion: q\nAnswer:".
 * - A base model (no chat template) reads its pretraining format: lead = [BOS].
 * - An instruct model (one with a chat template) gets the same plain format after a one-shot
 *   demonstration (lead = QA_DEMO), not its chat template. Measured on SmolLM2-135M-Instruct,
 *   greedy, 48 held-out bAbI questions drawn as the evaluation draws them (tasks 1, 2, 6, 11):
 *   one-shot plain 0.292 exact match (0.333 with a demonstration whose names are not bAbI's);
 *   plain without the demonstration 0.021; the question as a ChatML user turn 0.000 (0.229 of
 *   answers contain the gold word: it answers in sentences), with a system prompt asking for
 *   one word 0.000 (0.333 contain it). On the first 12 questions of tasks 1, 5, 6, 12 (short
 *   stories): one-shot plain 0.646, ChatML 0.000, the demonstration inside the user turn 0.042.
 */
export interface QaPromptFormat {
  lead: number[];
  tail(question: string): number[];
  /** Ids that end an answer besides those holding a newline (which the caller adds). */
  stopIds: number[];
  /** Whether the one-shot demonstration leads (instruct models). */
  oneShot: boolean;
}

/** The one-shot demonstration before an instruct model's context: a story, a question, a one-word answer. */
export const QA_DEMO = 'Mary moved to the bathroom. John went to the hallway. Mary travelled to the office.\nQuestion: Where is Mary?\nAnswer: office\n\n';

export function qaPromptFormat(tokenizer: Tokenizer): QaPromptFormat {
  const tail = (q: string) => tokenizer.encode(`\nQuestion: ${q}\nAnswer:`);
  const stopIds = [...new Set([tokenizer.eos, ...renderChatStopIds(tokenizer)])];
  if (!tokenizer.chatTemplate) return { lead: [tokenizer.bos], tail, stopIds, oneShot: false };
  const lead = tokenizer.encode(QA_DEMO, { bos: true });
  return { lead, tail, stopIds, oneShot: true };
}

/** End-of-turn ids of a tokenizer's vocabulary (ChatML, Llama 3, Phi, Gemma). */
function renderChatStopIds(tokenizer: Tokenizer): number[] {
  const ids: number[] = [];
  for (const name of END_OF_TURN) {
    const id = tokenizer.special.get(name);
    if (id !== undefined) ids.push(id);
  }
  return ids;
}

/**
 * The one generation path: text completions, chats (a chat is rendered into a completion's
 * prompt) and questions about a stored context all become rows [prefix][prompt] queued on the
 * engine, with a stored context's prefix in front when there is one (PrefixKv).
 *
 * - asking puts qaPromptFormat's tail ("\nQuestion: q\nAnswer:") after the context and keeps the
 *   first line generated;
 * - a chat is rendered by renderChat with the model's chat template (plain "User: ..." lines for
 *   a model without one) and ends at its end-of-turn ids and the request's stop strings;
 * - a completion ends at EOS or an end-of-turn id, or a stop string.
 */
import type { Tokenizer } from '../models/tokenizer.js';
import { renderChat, type ChatMessage, type QaPromptFormat } from '../models/chat.js';
import { ANONYMOUS } from './store.js';
import type { RowOutcome } from './engine.js';
import { HttpError, round } from './errors.js';
import type { Contexts, Loaded } from './contexts.js';
import type { PrefixKv, RowSettings } from './prefix-kv.js';
import { TextStream, answerText } from './text.js';

export interface AskBody {
  questions: string[];
  maxTokens?: number;
  temperature?: number;
  seed?: number;
}

export interface CompletionRequest {
  prompts: string[];
  contextId?: string;
  /** Who asks: a context of another owner is not found (default anonymous). */
  owner?: string;
  maxTokens?: number;
  temperature: number;
  topP?: number;
  seed?: number;
  stop: string[];
  /** Ids that end a completion (default: EOS and the vocabulary's end-of-turn ids). */
  stopIds?: number[];
  /** The prompts hold special tokens written as text (a rendered chat template). */
  special?: boolean;
}

/** A chat rendered for the decoder (Completions.chatPrompt). */
export interface ChatPrompt {
  prompt: string;
  /** The request's stop strings, plus the plain-lines format's ("\nUser:", ...) for a plain chat. */
  stop: string[];
  /** The template's end-of-turn ids (EOS for a plain chat). */
  stopIds: number[];
  /** Rendered with the model's own template (its special tokens are text in `prompt`). */
  templated: boolean;
  /**
   * The reply starts after "Assistant:", so its leading space is not part of the message
   * (plain chats only: after a template's assistant header the reply starts right away).
   */
  trimLead: boolean;
}

export interface CompletionChoice {
  index: number;
  text: string;
  finishReason: 'stop' | 'length';
  completionTokens: number;
}

export interface Timings {
  loadMs: number;
  prefixMs: number;
  queueMs: number;
  prefillMs: number;
  decodeMs: number;
  totalMs: number;
  batchSize: number;
}

export interface CompletionResult {
  choices: CompletionChoice[];
  promptTokens: number;
  completionTokens: number;
  /** Soft tokens and source tokens of the context, when there was one. */
  context?: { id: string; softTokens: number; sourceTokens: number; method: string };
  timings: Timings;
}

export interface RunningCompletion {
  /** The rows' prompt tokens (prefix + prompt), known before generation. */
  promptTokens: number;
  maxTokens: number;
  result: Promise<CompletionResult>;
  cancel(): void;
}

export interface AskResult extends Timings {
  id: string;
  method: string;
  softTokens: number;
  sourceTokens: number;
  answers: { question: string; answer: string; ms: number; tokens: number; finishReason: string }[];
}

export interface CompletionsConfig {
  tokenizer: Tokenizer;
  modelName: string;
  window: number;
  qaFormat: QaPromptFormat;
  contexts: Contexts;
  prefixes: PrefixKv;
  /** Where an answer ends: the QA format's stop ids and every id whose text holds a newline. */
  qaStops: Set<number>;
  /** The longest token in characters: a text of n characters has at least n / this tokens. */
  maxTokenChars: number;
}

export class Completions {
  /** EOS and the vocabulary's end-of-turn / end-of-text ids: where a completion ends. */
  private readonly endIds: Set<number>;

  constructor(private readonly c: CompletionsConfig) {
    this.endIds = new Set(c.qaFormat.stopIds);
  }

  private checkWindow(e: Loaded | null, promptLen: number, maxTokens: number, param: string): void {
    const prefix = this.c.prefixes.prefixLen(e) + (e?.memoryLen ?? 0);
    const need = prefix + promptLen + maxTokens;
    if (need > this.c.window) {
      throw new HttpError(
        400,
        'context_length_exceeded',
        `This model's maximum context length is ${this.c.window} tokens. However, you requested ${need} tokens (${prefix} in the context prefix, ${promptLen} in the prompt, ${maxTokens} for the completion). Reduce the prompt or the maximum tokens${e ? ', or use a context compressed at a higher ratio' : ''}.`,
        param,
      );
    }
  }

  /**
   * Queues one row per prompt after the context's prefix; the result settles when all rows have
   * finished, and releases the context. Throws synchronously (the caller still holds the
   * context then) when the queue is full.
   */
  private generate(entry: Loaded | null, loadMs: number, t0: number, prompts: number[][], settings: (i: number) => RowSettings) {
    const rows = prompts.map((p, i) => this.c.prefixes.row(entry, p, settings(i)));
    const result = this.c.prefixes
      .launch(entry, rows)
      .then(({ outs, prefixMs }) => {
        const rs: RowOutcome[] = outs.map((o) => o.r);
        const timings: Timings = {
          loadMs: round(loadMs, 2),
          prefixMs: round(prefixMs),
          queueMs: round(Math.max(...rs.map((o) => o.queueMs))),
          prefillMs: round(Math.max(...rs.map((o) => o.prefillMs))),
          decodeMs: round(Math.max(...rs.map((o) => o.decodeMs))),
          totalMs: round(performance.now() - t0),
          batchSize: Math.max(...rs.map((o) => o.batchSize)),
        };
        return { outs, timings };
      })
      .finally(() => {
        if (entry) this.c.contexts.release(entry);
      });
    return { rows, result };
  }

  /** Answers questions about a stored context; all questions go to the micro-batcher at once. */
  async ask(id: string, body: AskBody, owner = ANONYMOUS): Promise<AskResult> {
    const t0 = performance.now();
    const maxTokens = body.maxTokens ?? 32;
    const temperature = body.temperature ?? 0;
    const seed = body.seed ?? 0;
    const { entry, loadMs } = this.c.contexts.acquire(id, owner);
    let run;
    try {
      const prompts = body.questions.map((q) => this.c.qaFormat.tail(q));
      prompts.forEach((p) => this.checkWindow(entry, p.length, maxTokens, 'questions'));
      run = this.generate(entry, loadMs, t0, prompts, (i) => ({ maxTokens, temperature, seed: seed + i, stopTokens: this.c.qaStops }));
    } catch (e) {
      this.c.contexts.release(entry);
      throw e;
    }
    const { outs, timings } = await run.result;
    return {
      id,
      method: entry.method,
      softTokens: entry.ctx.meta.softTokens[0] ?? 0,
      sourceTokens: entry.ctx.meta.sourceTokens[0] ?? 0,
      answers: outs.map(({ r, at }, i) => ({
        question: body.questions[i],
        answer: answerText(this.c.tokenizer.decode(r.tokens)),
        ms: round(at - t0),
        tokens: r.tokens.length,
        finishReason: r.finishReason,
      })),
      ...timings,
    };
  }

  /**
   * Starts completions of text prompts (one row each), with a stored context in front when
   * contextId is given. Validation and queueing happen synchronously (they throw HttpErrors),
   * so a streaming route can still answer with an error status before it starts streaming.
   */
  start(req: CompletionRequest, onDelta?: (index: number, delta: string) => void): RunningCompletion {
    const t0 = performance.now();
    const { tokenizer, window, maxTokenChars, prefixes } = this.c;
    let entry: Loaded | null = null;
    let loadMs = 0;
    if (req.contextId !== undefined) ({ entry, loadMs } = this.c.contexts.acquire(req.contextId, req.owner ?? ANONYMOUS));
    try {
      const prefix = prefixes.prefixLen(entry) + (entry?.memoryLen ?? 0);
      for (const p of req.prompts)
        if (p.length > window * maxTokenChars) this.checkWindow(entry, Math.ceil(p.length / maxTokenChars), req.maxTokens ?? 1, 'prompt');
      const prompts = req.prompts.map((p) => tokenizer.encode(p, req.special ? { allowSpecial: true } : undefined));
      if (!entry && prefixes.start.length === 0 && prompts.some((p) => p.length === 0)) {
        throw new HttpError(
          400,
          'empty_prompt',
          `the prompt is empty and ${this.c.modelName} is trained without a BOS token, so there is nothing to continue; send at least one token of text (or a context_id)`,
          'prompt',
        );
      }
      const stopTokens = req.stopIds ? new Set(req.stopIds) : this.endIds;
      const longest = Math.max(...prompts.map((p) => p.length));
      const maxTokens = req.maxTokens ?? Math.max(1, Math.min(256, window - prefix - longest));
      prompts.forEach((p) => this.checkWindow(entry, p.length, maxTokens, 'max_tokens'));
      const streams = prompts.map(() => new TextStream(tokenizer, req.stop));
      const seed = req.seed ?? Math.floor(Math.random() * 2 ** 31);
      const onToken = (i: number) => (id: number) => {
        const { delta, stopped } = streams[i].push(id);
        if (delta && onDelta) onDelta(i, delta);
        return stopped;
      };
      const promptTokens = prompts.reduce((s, p) => s + prefix + p.length, 0);
      const held = entry;
      const run = this.generate(entry, loadMs, t0, prompts, (i) => ({
        maxTokens,
        temperature: req.temperature,
        topP: req.topP,
        seed: seed + i,
        stopTokens,
        onToken: onToken(i),
      }));
      const result = run.result.then(({ outs, timings }): CompletionResult => {
        const choices = outs.map(({ r }, i) => {
          const rest = streams[i].finish();
          if (rest && onDelta) onDelta(i, rest);
          return {
            index: i,
            text: streams[i].text,
            finishReason: r.finishReason === 'length' ? ('length' as const) : ('stop' as const),
            completionTokens: r.tokens.length,
          };
        });
        const completionTokens = choices.reduce((s, c) => s + c.completionTokens, 0);
        const context = held
          ? { id: held.id, softTokens: held.ctx.meta.softTokens[0] ?? 0, sourceTokens: held.ctx.meta.sourceTokens[0] ?? 0, method: held.method }
          : undefined;
        return { choices, promptTokens, completionTokens, context, timings };
      });
      return {
        promptTokens,
        maxTokens,
        result,
        cancel: () => {
          for (const r of run.rows) r.cancelled = true;
        },
      };
    } catch (e) {
      if (entry) this.c.contexts.release(entry);
      throw e;
    }
  }

  /**
   * A chat as a prompt: rendered with the model's own chat template (renderChat; plain
   * "User: ..." lines for a model without one), ending at the template's end-of-turn ids and the
   * request's stop strings (plus the plain lines' "\nUser:" / "\nSystem:" for a plain chat).
   */
  chatPrompt(messages: ChatMessage[], stop: string[]): ChatPrompt {
    try {
      const r = renderChat(this.c.tokenizer, messages);
      return { prompt: r.text, stop: [...stop, ...r.stops], stopIds: r.stopIds, templated: r.templated, trimLead: !r.templated };
    } catch (e) {
      const msg = (e as Error).message;
      // a template may refuse a conversation (e.g. roles that do not alternate): also the client's to fix
      throw new HttpError(400, msg.startsWith('chat template') ? 'chat_template_error' : 'unsupported_content', msg, 'messages');
    }
  }
}

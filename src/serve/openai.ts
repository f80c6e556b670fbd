/**
 * The OpenAI-compatible generation routes, /v1/completions and /v1/chat/completions, as one path:
 * both become a CompletionRequest (a chat is first rendered into a prompt), run through
 * the service's startCompletion, and answer as JSON or as server-sent events. What differs
 * is a Kind: how the body is read, the object names, and how a choice, a delta and a finish look.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ChatMessage } from '../models/chat.js';
import { HttpError, errorBody } from './errors.js';
import type { CompletionChoice, CompletionRequest, CompletionResult, RunningCompletion } from './service.js';
import type { MaybePromise, ServiceApi } from './service-api.js';

type Schema = Record<string, unknown>;

interface OpenAiCommon {
  model: string;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  n?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  context_id?: string;
}

interface TextBody extends OpenAiCommon {
  prompt: string | string[];
  echo?: boolean | null;
  logprobs?: number | null;
  best_of?: number | null;
  suffix?: string | null;
}

interface ChatBody extends OpenAiCommon {
  messages: ChatMessage[];
}

/** One generation route's own parts. */
interface Kind<B extends OpenAiCommon> {
  idPrefix: string;
  object: string;
  chunkObject: string;
  /** The request (after the shared fields), its number of choices, and whether replies lose their leading space. */
  read(
    service: ServiceApi,
    b: B,
    shared: Omit<CompletionRequest, 'prompts' | 'stop'>,
  ): MaybePromise<{ request: CompletionRequest; choices: number; trimLead: boolean }>;
  choice(ch: CompletionChoice, text: string): Schema;
  delta(i: number, text: string): Schema;
  finish(i: number, reason: string): Schema;
  opening?: (i: number) => Schema;
}

function stopList(stop: unknown): string[] {
  if (stop === undefined || stop === null) return [];
  return typeof stop === 'string' ? [stop] : (stop as string[]);
}

function refuse(param: string, what: string): never {
  throw new HttpError(400, 'unsupported_parameter', what, param);
}

export const TEXT: Kind<TextBody> = {
  idPrefix: 'cmpl',
  object: 'text_completion',
  chunkObject: 'text_completion',
  read: (_service, b, shared) => {
    if (b.echo) refuse('echo', 'echo is not supported');
    if (b.logprobs !== undefined && b.logprobs !== null) refuse('logprobs', 'logprobs are not supported');
    if (b.best_of !== undefined && b.best_of !== null && b.best_of !== 1) refuse('best_of', 'best_of > 1 is not supported');
    if (b.suffix) refuse('suffix', 'suffix is not supported');
    const prompts = typeof b.prompt === 'string' ? [b.prompt] : b.prompt;
    return { request: { ...shared, prompts, maxTokens: b.max_tokens ?? 16, stop: stopList(b.stop) }, choices: prompts.length, trimLead: false };
  },
  choice: (ch, text) => ({ text, index: ch.index, logprobs: null, finish_reason: ch.finishReason }),
  delta: (i, text) => ({ text, index: i, logprobs: null, finish_reason: null }),
  finish: (i, reason) => ({ text: '', index: i, logprobs: null, finish_reason: reason }),
};

export const CHAT: Kind<ChatBody> = {
  idPrefix: 'chatcmpl',
  object: 'chat.completion',
  chunkObject: 'chat.completion.chunk',
  read: async (service, b, shared) => {
    const chat = await service.chatPrompt(b.messages, stopList(b.stop));
    const request = {
      ...shared,
      prompts: [chat.prompt],
      maxTokens: b.max_completion_tokens ?? b.max_tokens ?? undefined,
      stop: chat.stop,
      stopIds: chat.stopIds,
      special: chat.templated,
    };
    return { request, choices: 1, trimLead: chat.trimLead };
  },
  choice: (ch, text) => ({ index: ch.index, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: ch.finishReason }),
  delta: (i, content) => ({ index: i, delta: { content }, logprobs: null, finish_reason: null }),
  finish: (i, reason) => ({ index: i, delta: {}, logprobs: null, finish_reason: reason }),
  opening: (i) => ({ index: i, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }),
};

function usage(r: CompletionResult): Schema {
  return { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens };
}

function softpressExt(r: CompletionResult): Schema {
  const t = r.timings;
  return {
    context_id: r.context?.id ?? null,
    soft_tokens: r.context?.softTokens ?? null,
    source_tokens: r.context?.sourceTokens ?? null,
    load_ms: t.loadMs,
    prefix_ms: t.prefixMs,
    queue_ms: t.queueMs,
    prefill_ms: t.prefillMs,
    decode_ms: t.decodeMs,
    total_ms: t.totalMs,
    batch_size: t.batchSize,
  };
}

/** A plain chat's reply starts after "Assistant:": its text (and first delta) loses the leading space. */
function trimmer(on: boolean): (text: string) => string {
  let leading = on;
  return (text) => {
    if (!leading) return text;
    const t = text.replace(/^\s+/, '');
    if (t) leading = false;
    return t;
  };
}

/**
 * Streams a running completion as OpenAI server-sent events: an opening chunk per choice (chat),
 * a chunk per text delta, a closing chunk per choice with its finish_reason, the usage chunk when
 * asked, then `data: [DONE]`. Errors found before the stream starts (validation, 404, 409, 429)
 * are ordinary JSON error responses (start throws them); later ones become an error event.
 */
async function stream(
  reply: FastifyReply,
  start: (onDelta: (i: number, d: string) => void) => MaybePromise<RunningCompletion>,
  chunk: (choices: Schema[], extra?: Schema) => Schema,
  kind: Kind<never>,
  choices: number,
  trimLead: boolean,
  includeUsage: boolean,
): Promise<void> {
  const raw = reply.raw;
  let open = false;
  const write = (obj: Schema | string) => {
    if (open && !raw.writableEnded && !raw.destroyed) raw.write(`data: ${typeof obj === 'string' ? obj : JSON.stringify(obj)}\n\n`);
  };
  const trims = Array.from({ length: choices }, () => trimmer(trimLead));
  const run = await start((i, d) => {
    const text = trims[i](d);
    if (text) write(chunk([kind.delta(i, text)]));
  });
  reply.hijack();
  raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  open = true;
  if (kind.opening) for (let i = 0; i < choices; i++) write(chunk([kind.opening(i)]));
  let finished = false;
  raw.on('close', () => {
    if (!finished) run.cancel();
  });
  try {
    const r = await run.result;
    for (const c of r.choices) write(chunk([kind.finish(c.index, c.finishReason)]));
    if (includeUsage) write(chunk([], { usage: usage(r) }));
  } catch (e) {
    const status = e instanceof HttpError ? e.status : 500;
    write(errorBody(status, e instanceof HttpError ? e.code : 'internal_error', (e as Error).message));
  } finally {
    finished = true;
    write('[DONE]');
    raw.end();
  }
}

/** The route handler of a generation route. */
export function completionHandler<B extends OpenAiCommon>(service: ServiceApi, kind: Kind<B>) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    const b = req.body as B;
    service.checkModel(b.model);
    if (b.n !== undefined && b.n !== null && b.n !== 1) refuse('n', 'n > 1 is not supported');
    const shared = { temperature: b.temperature ?? 1, topP: b.top_p ?? undefined, seed: b.seed ?? undefined, contextId: b.context_id, owner: req.owner };
    const { request, choices, trimLead } = await kind.read(service, b, shared);
    const head = { id: `${kind.idPrefix}-${randomBytes(12).toString('hex')}`, created: Math.floor(Date.now() / 1000), model: service.modelName };
    if (b.stream) {
      const chunk = (cs: Schema[], extra: Schema = {}) => ({
        id: head.id,
        object: kind.chunkObject,
        created: head.created,
        model: head.model,
        choices: cs,
        ...extra,
      });
      await stream(
        reply,
        (onDelta) => service.startCompletion(request, onDelta),
        chunk,
        kind as Kind<never>,
        choices,
        trimLead,
        !!b.stream_options?.include_usage,
      );
      return reply;
    }
    const run = await service.startCompletion(request);
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) run.cancel();
    });
    const r = await run.result;
    // the same text as the streamed deltas
    const choiceList = r.choices.map((ch) => kind.choice(ch, trimmer(trimLead)(ch.text)));
    return { id: head.id, object: kind.object, created: head.created, model: head.model, choices: choiceList, usage: usage(r), softpress: softpressExt(r) };
  };
}

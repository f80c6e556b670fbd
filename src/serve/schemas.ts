/**
 * JSON schemas of every route: Fastify validates requests with them (and serializes the main
 * responses through them), and /openapi.json is assembled from the same objects, so the
 * document cannot drift from what the server enforces.
 */

type Schema = Record<string, unknown>;

const str = (description: string, extra: Schema = {}): Schema => ({ type: 'string', description, ...extra });
const int = (description: string, extra: Schema = {}): Schema => ({ type: 'integer', description, ...extra });
const num = (description: string, extra: Schema = {}): Schema => ({ type: 'number', description, ...extra });

export const errorSchema: Schema = {
  type: 'object',
  description: 'Every error, in the OpenAI shape.',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['message', 'type', 'code'],
      properties: {
        message: str('What went wrong and what to do about it.'),
        type: str('invalid_request_error, not_found_error, conflict_error, rate_limit_error, insufficient_quota or server_error.'),
        code: str('A stable machine-readable code, e.g. context_not_found, context_too_long, queue_full.'),
        param: { type: ['string', 'null'], description: 'The request field at fault, when there is one.' },
      },
    },
  },
};

export const idParams: Schema = {
  type: 'object',
  required: ['id'],
  properties: { id: str('A context id as returned by POST /v1/contexts.', { pattern: '^[A-Za-z0-9_-]{1,80}$' }) },
};

const budgetSchema: Schema = {
  type: 'object',
  description: 'The budget asked for: ratio (context tokens per soft token) or tokens (soft tokens).',
  properties: { ratio: { type: 'number' }, tokens: { type: 'integer' } },
};

export const contextView: Schema = {
  type: 'object',
  required: ['id', 'method', 'sourceTokens', 'softTokens', 'ratio', 'compressMs'],
  properties: {
    id: str('Context id.'),
    method: str('Compression method.'),
    budget: budgetSchema,
    sourceTokens: int('Tokens of the source text.'),
    softTokens: int('Soft tokens (or memory slots) the decoder reads instead.'),
    ratio: { type: ['number', 'null'], description: 'sourceTokens / softTokens (null when there are no soft tokens).' },
    compressMs: num('Milliseconds the compression took (excluding queueing).'),
    bytes: int('Size of the stored .softctx.'),
    createdAt: str('ISO time of creation.'),
    lastUsed: str('ISO time of the last use.'),
    baseFingerprint: str('Fingerprint of the base model the context was made for.'),
    textChars: int('Characters of the source text.'),
  },
};

export const createContextBody: Schema = {
  type: 'object',
  required: ['text'],
  additionalProperties: false,
  properties: {
    text: str('The document to compress.', { minLength: 1 }),
    method: str('Compression method (GET /v1/methods); default: the first learned method, else truncate.', { minLength: 1, maxLength: 64 }),
    ratio: num('Context tokens per soft token (>= 1); default 4. Exclusive with budget.', { minimum: 1, maximum: 1000000 }),
    budget: int('Soft tokens to produce. Exclusive with ratio.', { minimum: 0, maximum: 1000000 }),
  },
};

export const createContextResponse: Schema = {
  ...contextView,
  properties: {
    ...(contextView.properties as Schema),
    evicted: {
      type: 'array',
      items: { type: 'string' },
      description: "Ids of your contexts evicted from the store to make room (least recently used first; other keys' evicted contexts are not listed).",
    },
  },
};

export const listContextsQuery: Schema = {
  type: 'object',
  additionalProperties: false,
  properties: { limit: str('At most this many (1-1000, default 100), most recently used first.', { pattern: '^[0-9]{1,4}$' }) },
};

export const listContextsResponse: Schema = {
  type: 'object',
  required: ['data'],
  properties: { object: { type: 'string' }, data: { type: 'array', items: contextView } },
};

export const deleteContextResponse: Schema = {
  type: 'object',
  required: ['id', 'deleted'],
  properties: { id: { type: 'string' }, deleted: { type: 'boolean' } },
};

export const askBody: Schema = {
  type: 'object',
  required: ['questions'],
  additionalProperties: false,
  properties: {
    questions: {
      type: 'array',
      minItems: 1,
      maxItems: 32,
      items: { type: 'string', minLength: 1, maxLength: 4000 },
      description: 'Questions about the context; each becomes one row of the micro-batch.',
    },
    maxTokens: int('Answer tokens at most (default 32).', { minimum: 1, maximum: 1024 }),
    temperature: num('0 (default) = greedy.', { minimum: 0, maximum: 2 }),
    seed: int('Sampling seed (question i uses seed + i).', { minimum: 0, maximum: 2147483647 }),
  },
};

const timingProps: Schema = {
  loadMs: num('Loading the context from the store (0 when it was in memory).'),
  prefixMs: num("Computing the context prefix's keys/values (first use only; 0 when cached)."),
  queueMs: num('Longest wait for a micro-batch.'),
  prefillMs: num('Longest prefill (context prefix + prompt through the decoder).'),
  decodeMs: num('Longest token-by-token decoding.'),
  totalMs: num('The whole request, as the server saw it.'),
  batchSize: int('Largest micro-batch the rows ran in (rows sharing each forward).'),
};

export const askResponse: Schema = {
  type: 'object',
  required: ['answers', 'totalMs'],
  properties: {
    id: str('Context id.'),
    method: str('Method of the context.'),
    softTokens: { type: 'integer' },
    sourceTokens: { type: 'integer' },
    answers: {
      type: 'array',
      items: {
        type: 'object',
        required: ['question', 'answer', 'ms'],
        properties: {
          question: { type: 'string' },
          answer: str('The first line of the generated answer, trimmed.'),
          ms: num('Milliseconds from the request to this answer.'),
          tokens: int('Tokens generated.'),
          finishReason: str('stop, length or cancelled.'),
        },
      },
    },
    ...timingProps,
  },
};

const stopSchema: Schema = {
  description: 'Up to 8 strings that end the completion (not included).',
  oneOf: [{ type: 'string', minLength: 1 }, { type: 'array', maxItems: 8, items: { type: 'string', minLength: 1 } }, { type: 'null' }],
};

/** Fields both OpenAI routes share; unknown fields are accepted and ignored, as OpenAI clients send many. */
const openaiCommon: Schema = {
  model: str('The model id (GET /v1/models).', { minLength: 1 }),
  max_tokens: { type: ['integer', 'null'], minimum: 1, maximum: 4096, description: 'Tokens to generate at most (completions: default 16).' },
  temperature: { type: ['number', 'null'], minimum: 0, maximum: 2, description: 'Default 1; 0 = greedy.' },
  top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 1 },
  n: { type: ['integer', 'null'], minimum: 1, maximum: 1, description: 'Only 1 is supported.' },
  seed: { type: ['integer', 'null'], minimum: 0, maximum: 2147483647 },
  stop: stopSchema,
  stream: { type: ['boolean', 'null'], description: 'Server-sent events in the OpenAI chunk format, ending with data: [DONE].' },
  stream_options: { type: ['object', 'null'] },
  context_id: str('softpress extension: a stored soft context (POST /v1/contexts) read in front of the prompt.', { pattern: '^[A-Za-z0-9_-]{1,80}$' }),
};

export const completionsBody: Schema = {
  type: 'object',
  required: ['model', 'prompt'],
  properties: {
    ...openaiCommon,
    prompt: {
      description: 'A prompt or up to 16 prompts (one choice each).',
      oneOf: [{ type: 'string' }, { type: 'array', minItems: 1, maxItems: 16, items: { type: 'string' } }],
    },
    echo: { type: ['boolean', 'null'] },
    logprobs: { type: ['integer', 'null'] },
    best_of: { type: ['integer', 'null'] },
    suffix: { type: ['string', 'null'] },
  },
};

const usageSchema: Schema = {
  type: 'object',
  properties: { prompt_tokens: { type: 'integer' }, completion_tokens: { type: 'integer' }, total_tokens: { type: 'integer' } },
};

const softpressExt: Schema = {
  type: 'object',
  description: 'softpress extension: the context read and the timings.',
  properties: {
    context_id: { type: ['string', 'null'] },
    soft_tokens: { type: ['integer', 'null'] },
    source_tokens: { type: ['integer', 'null'] },
    load_ms: { type: 'number' },
    prefix_ms: { type: 'number' },
    queue_ms: { type: 'number' },
    prefill_ms: { type: 'number' },
    decode_ms: { type: 'number' },
    total_ms: { type: 'number' },
    batch_size: { type: 'integer' },
  },
};

/** The generation responses' family: OpenAI's completion object, whose choices differ by route. */
function generationResponse(object: string, choice: Schema): Schema {
  return {
    type: 'object',
    required: ['id', 'object', 'created', 'model', 'choices'],
    properties: {
      id: { type: 'string' },
      object: { type: 'string', enum: [object] },
      created: { type: 'integer' },
      model: { type: 'string' },
      choices: { type: 'array', items: { type: 'object', properties: choice } },
      usage: usageSchema,
      softpress: softpressExt,
    },
  };
}

export const completionsResponse = generationResponse('text_completion', {
  text: { type: 'string' },
  index: { type: 'integer' },
  logprobs: { type: 'null' },
  finish_reason: { type: 'string' },
});

export const chatBody: Schema = {
  type: 'object',
  required: ['model', 'messages'],
  properties: {
    ...openaiCommon,
    max_completion_tokens: { type: ['integer', 'null'], minimum: 1, maximum: 4096 },
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 256,
      description:
        'Rendered with the base model\'s own chat template; for a model without one, as plain text lines ("User: ...\\nAssistant: ...") ending with "Assistant:".',
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant', 'tool'] },
          content: {
            oneOf: [
              { type: 'string' },
              { type: 'null' },
              { type: 'array', items: { type: 'object', required: ['type'], properties: { type: { type: 'string' }, text: { type: 'string' } } } },
            ],
          },
        },
      },
    },
  },
};

export const chatResponse = generationResponse('chat.completion', {
  index: { type: 'integer' },
  message: { type: 'object', properties: { role: { type: 'string' }, content: { type: 'string' } } },
  logprobs: { type: 'null' },
  finish_reason: { type: 'string' },
});

export const modelResponse: Schema = {
  type: 'object',
  required: ['id', 'object'],
  properties: { id: { type: 'string' }, object: { type: 'string' }, created: { type: 'integer' }, owned_by: { type: 'string' } },
};

export const modelsResponse: Schema = {
  type: 'object',
  required: ['object', 'data'],
  properties: {
    object: { type: 'string', enum: ['list'] },
    data: {
      type: 'array',
      items: modelResponse,
    },
  },
};

export const methodsResponse: Schema = {
  type: 'object',
  required: ['methods', 'default'],
  properties: {
    default: str('Method used when a request names none.'),
    defaultRatio: { type: 'number' },
    window: int("The base model's window (positions)."),
    methods: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          name: { type: 'string' },
          learned: { type: 'boolean' },
          about: { type: 'string' },
          ratios: { type: ['array', 'null'], items: { type: 'number' } },
          maxInputTokens: { type: 'integer' },
        },
      },
    },
  },
};

export const healthResponse: Schema = {
  type: 'object',
  description: 'Liveness and queue, store and memory figures.',
  additionalProperties: true,
  properties: { ok: { type: 'boolean' } },
};

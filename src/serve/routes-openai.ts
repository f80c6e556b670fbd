/**
 * The OpenAI-compatible routes: models, and completions and chats (one generation path,
 * openai.ts over completion.ts), optionally after a stored soft context (context_id).
 */
import type { ServiceApi } from './service-api.js';
import type { RouteDef } from './routes.js';
import { CHAT, TEXT, completionHandler } from './openai.js';
import * as S from './schemas.js';

export function openaiRoutes(service: ServiceApi): RouteDef[] {
  const model = () => ({ id: service.modelName, object: 'model', created: Math.floor(service.startedAt / 1000), owned_by: 'softpress' });
  return [
    {
      method: 'GET',
      url: '/v1/models',
      summary: 'Models (OpenAI-compatible).',
      tag: 'openai',
      response: S.modelsResponse,
      errors: [],
      handler: async () => ({ object: 'list', data: [model()] }),
    },
    {
      method: 'GET',
      url: '/v1/models/:model',
      summary: 'One model (OpenAI-compatible).',
      tag: 'openai',
      params: { type: 'object', required: ['model'], properties: { model: { type: 'string', description: 'Model id.' } } },
      response: S.modelResponse,
      errors: [404],
      handler: async (req) => {
        service.checkModel((req.params as { model: string }).model);
        return model();
      },
    },
    {
      method: 'POST',
      url: '/v1/completions',
      summary: 'Text completions (OpenAI-compatible), optionally after a stored soft context (context_id).',
      description:
        "The prompt is read as it is: after the stored context's prefix ([lead][soft context], as asking reads it) with context_id; without one, after BOS only when the " +
        'tokenizer starts sequences with it (a model trained without BOS, like SmolLM2, reads the prompt alone). The completion ends at EOS or an end-of-turn token, or a stop string.',
      tag: 'openai',
      body: S.completionsBody,
      response: S.completionsResponse,
      streams: true,
      errors: [400, 404, 409, 413, 415, 429, 500],
      handler: completionHandler(service, TEXT),
    },
    {
      method: 'POST',
      url: '/v1/chat/completions',
      summary: 'Chat completions (OpenAI-compatible), optionally after a stored soft context (context_id).',
      description:
        "Messages are rendered with the base model's own chat template (its Jinja chat_template) and the reply ends at the template's end-of-turn token; " +
        'a model without a template gets plain text lines ("System: ...", "User: ...", "Assistant: ...") ending with "Assistant:", and the reply ends at a new "User:" or "System:" line. ' +
        `The request's stop strings end it too. This server's base model ${service.tokenizer.chatTemplate ? 'has a chat template' : 'has none (plain lines)'}. ` +
        'With context_id, the rendered chat follows the stored context, read as for asking ([lead][soft context]).',
      tag: 'openai',
      body: S.chatBody,
      response: S.chatResponse,
      streams: true,
      errors: [400, 404, 409, 413, 415, 429, 500],
      handler: completionHandler(service, CHAT),
    },
  ];
}

/** The softpress context API: methods, compress-and-store, list, get, delete, and asking about a context. */
import type { ServiceApi } from './service-api.js';
import type { OwnerQuota } from './store.js';
import type { RouteDef } from './routes.js';
import { HttpError } from './errors.js';
import * as S from './schemas.js';

/** `storageQuota`: each owner's stored contexts and bytes at most (none when absent). */
export function contextRoutes(service: ServiceApi, storageQuota: OwnerQuota | undefined): RouteDef[] {
  return [
    {
      method: 'GET',
      url: '/v1/methods',
      summary: 'Compression methods this server offers.',
      tag: 'contexts',
      response: S.methodsResponse,
      errors: [],
      handler: async () => ({ default: service.defaultMethod, defaultRatio: service.defaultRatio, window: service.window, methods: await service.methods() }),
    },
    {
      method: 'POST',
      url: '/v1/contexts',
      summary: 'Compress a document and store the soft context.',
      description: 'Tokenizes the text, compresses it with the method at the ratio (or budget), stores the .softctx durably and returns its id.',
      tag: 'contexts',
      body: S.createContextBody,
      status: 201,
      response: S.createContextResponse,
      errors: [400, 413, 415, 429, 500],
      handler: async (req, reply) => {
        const r = await service.createContext(req.body as { text: string; method?: string; ratio?: number; budget?: number }, {
          owner: req.owner,
          quota: storageQuota,
        });
        void reply.status(201).header('location', `/v1/contexts/${r.id}`);
        return r;
      },
    },
    {
      method: 'GET',
      url: '/v1/contexts',
      summary: 'Stored contexts of this base model, most recently used first.',
      tag: 'contexts',
      query: S.listContextsQuery,
      response: S.listContextsResponse,
      errors: [400],
      handler: async (req) => {
        const q = req.query as { limit?: string };
        const limit = q.limit === undefined ? 100 : Number(q.limit);
        if (limit < 1 || limit > 1000) throw new HttpError(400, 'bad_limit', `limit must be between 1 and 1000, got ${q.limit}`, 'limit');
        return { object: 'list', data: await service.listContexts(limit, req.owner) };
      },
    },
    {
      method: 'GET',
      url: '/v1/contexts/:id',
      summary: "A stored context's metadata.",
      tag: 'contexts',
      params: S.idParams,
      response: S.contextView,
      errors: [400, 404, 409],
      handler: async (req) => service.getContext((req.params as { id: string }).id, req.owner),
    },
    {
      method: 'DELETE',
      url: '/v1/contexts/:id',
      summary: 'Delete a stored context.',
      tag: 'contexts',
      params: S.idParams,
      response: S.deleteContextResponse,
      errors: [400, 404],
      handler: async (req) => {
        const { id } = req.params as { id: string };
        await service.deleteContext(id, req.owner);
        return { id, deleted: true };
      },
    },
    {
      method: 'POST',
      url: '/v1/contexts/:id/ask',
      summary: 'Answer questions about a stored context.',
      description:
        'Each question is read in the base model\'s QA format: [lead][soft context]"\\nQuestion: ...\\nAnswer:", where the lead is BOS for a base model and a one-shot ' +
        `demonstration (a story, a question, a one-word answer) for an instruct model (this server: ${service.qaFormat.oneShot ? 'the demonstration' : 'BOS'}). ` +
        'The answer is the first line generated. Simultaneous questions (of this and other requests) share decoder forwards.',
      tag: 'contexts',
      params: S.idParams,
      body: S.askBody,
      response: S.askResponse,
      errors: [400, 404, 409, 415, 429, 500],
      handler: async (req) =>
        service.ask((req.params as { id: string }).id, req.body as { questions: string[]; maxTokens?: number; temperature?: number; seed?: number }, req.owner),
    },
  ];
}

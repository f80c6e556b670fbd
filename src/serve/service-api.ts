/**
 * What the HTTP routes need of a service: SoftpressService itself (everything on this thread),
 * or ServiceThread (service-thread.ts: the service runs in a worker thread and this thread only
 * speaks HTTP). Calls may answer at once or later, so the routes await them all.
 */
import type { ChatMessage } from '../models/chat.js';
import type { OwnerQuota } from './store.js';
import type { ContextView } from './contexts.js';
import type { CreateContextBody, MethodInfo } from './compression.js';
import type { AskBody, AskResult, ChatPrompt, CompletionRequest, RunningCompletion } from './completion.js';

export type MaybePromise<T> = T | Promise<T>;

export interface ServiceApi {
  readonly modelName: string;
  readonly fingerprint: string;
  readonly window: number;
  readonly defaultMethod: string;
  readonly defaultRatio: number;
  readonly startedAt: number;
  /** Whether questions follow a one-shot demonstration (an instruct model) or BOS. */
  readonly qaFormat: { readonly oneShot: boolean };
  /** Whether the base model has its own chat template. */
  readonly tokenizer: { readonly chatTemplate?: string };
  methods(): MaybePromise<MethodInfo[]>;
  /** Throws 404 model_not_found for another model's name. */
  checkModel(name: string | undefined): void;
  createContext(body: CreateContextBody, opts?: { owner?: string; quota?: OwnerQuota }): Promise<ContextView & { evicted: string[] }>;
  getContext(id: string, owner?: string): MaybePromise<ContextView>;
  listContexts(limit?: number, owner?: string): MaybePromise<ContextView[]>;
  deleteContext(id: string, owner?: string): MaybePromise<void>;
  ask(id: string, body: AskBody, owner?: string): Promise<AskResult>;
  /** Errors found before generation starts (validation, 404, 409, 429) reject or throw here, not in `result`. */
  startCompletion(req: CompletionRequest, onDelta?: (index: number, delta: string) => void): MaybePromise<RunningCompletion>;
  chatPrompt(messages: ChatMessage[], stop: string[]): MaybePromise<ChatPrompt>;
  /** Answered at once (liveness must not wait for model work). */
  health(): Record<string, unknown>;
  close(): Promise<void>;
}

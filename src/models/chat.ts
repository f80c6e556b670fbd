/**
 * Chat prompts: a model's own chat template (the Jinja `chat_template` of its tokenizer config or
 * GGUF metadata, rendered with @huggingface/jinja, as transformers and llama.cpp do), or plain
 * "User: ...\nAssistant:" lines for a model that has none (a base model such as softpress-base).
 */
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

/** A chat template, parsed once per distinct text. */
function template(source: string): Template {
  let t = compiled.get(source);
  if (!t) {
    try {
      t = new Template(source);
    } catch (e) {
      throw new Error(`chat template: cannot parse it (${(e as Error).message})`);
    }
    compiled.set(source, t);
  }
  return t;
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
  let text: string;
  try {
    text = template(tokenizer.chatTemplate).render({
      messages: plain,
      add_generation_prompt: true,
      bos_token: tokenText(tokenizer, tokenizer.bos),
      eos_token: tokenText(tokenizer, tokenizer.eos),
    });
  } catch (e) {
    throw new Error(`chat template: rendering failed (${(e as Error).message})`);
  }
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

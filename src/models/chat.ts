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
  const stopIds = new Set([tokenizer.eos]);
  for (const name of ['<|im_end|>', '<|eot_id|>', '<|end|>', '<end_of_turn>', '<|endoftext|>']) {
    const id = tokenizer.special.get(name);
    if (id !== undefined) stopIds.add(id);
  }
  return { text, stops: [], stopIds: [...stopIds], templated: true };
}

/** One user turn rendered for the model (the common case: a single question). */
export function renderUserPrompt(tokenizer: Tokenizer, content: string): RenderedChat {
  return renderChat(tokenizer, [{ role: 'user', content }]);
}

/**
 * How a question about a context is put to the model, with the context in between so that a
 * compressor can stand in for it: `lead` tokens, then the context (tokens or soft tokens), then
 * `tail(question)`. With a chat template the context and question are one user turn:
 *   lead = "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n"
 *   tail = "\nQuestion: q\nAnswer briefly.<|im_end|>\n<|im_start|>assistant\n"
 * Without one (a base model): lead = [BOS], tail = "\nQuestion: q\nAnswer:" — the pretraining format.
 */
export interface QaPromptFormat {
  lead: number[];
  tail(question: string): number[];
  /** Ids that end an answer (end of turn; for plain prompts also every token holding a newline, added by the caller). */
  stopIds: number[];
  chat: boolean;
}

/** What a chat model is asked after the question, so that answers come as short spans. */
export const QA_INSTRUCTION = 'Answer with a word or a short phrase from the text.';

const CONTEXT_MARK = '\u0000CONTEXT\u0000';

export function qaPromptFormat(tokenizer: Tokenizer): QaPromptFormat {
  if (!tokenizer.chatTemplate) {
    return { lead: [tokenizer.bos], tail: (q) => tokenizer.encode(`\nQuestion: ${q}\nAnswer:`), stopIds: [tokenizer.eos], chat: false };
  }
  const probe = renderChat(tokenizer, [{ role: 'user', content: `${CONTEXT_MARK}\nQuestion: ?` }]);
  const at = probe.text.indexOf(CONTEXT_MARK);
  if (at < 0 || probe.text.indexOf(CONTEXT_MARK, at + 1) >= 0) throw new Error('chat template: the user message does not appear exactly once in its rendering');
  const head = probe.text.slice(0, at);
  const render = (q: string) => {
    const text = renderChat(tokenizer, [{ role: 'user', content: `${CONTEXT_MARK}\nQuestion: ${q}\n${QA_INSTRUCTION}` }]).text;
    if (!text.startsWith(head + CONTEXT_MARK)) throw new Error('chat template: the text before the user message depends on the message');
    return text.slice(head.length + CONTEXT_MARK.length);
  };
  return { lead: tokenizer.encode(head, { bos: true, allowSpecial: true }), tail: (q) => tokenizer.encode(render(q), { allowSpecial: true }), stopIds: probe.stopIds, chat: true };
}

/**
 * The task prompts around a soft context, one definition for training objectives and
 * evaluation, for any tokenizer (no special token that only softpress's own tokenizer has):
 *
 *   restate (autoencoding, reconstruction): GMSA's text prompt "Restate the aforementioned text."
 *     base model      [BOS] [soft] "\nRestate the aforementioned text.\n" | passage EOS
 *     instruct model  the model's chat template around one user turn, the soft context in place
 *                     of the user's text, the passage as the assistant's reply:
 *                     <chat head> [soft] "\nRestate the aforementioned text." <end of turn>
 *                     <assistant start> | passage <end of turn>
 *     ("|" marks where the loss starts; the restated passage is the target.)
 *   qa: qaPromptFormat (models/chat.ts), the format the evaluation asks in:
 *     [lead] [soft] "\nQuestion: q\nAnswer:" | " answer" EOS
 *     (lead: BOS for a base model, a one-shot demonstration for an instruct model)
 *   lm (continuation): [BOS] [soft] | continuation
 *
 * Whether the instruct model's restate prompt is wrapped in its chat template was measured on
 * SmolLM2-135M-Instruct with the passage itself in place of the soft context (teacher-forced
 * restate loss, nats per token; experiments/probes/measure-restate-format.mjs, results/restate-format.md):
 * see RESTATE_CHAT below.
 *
 * A compressor may own learned task embeddings (ICAE's [AE] and [LM] tokens) that sit right
 * after its soft tokens: withTaskEmbeddings() puts them there; the text prompt follows as for
 * every other method.
 */
import type { Tokenizer } from '../models/tokenizer.js';
import { qaPromptFormat, renderChat, type QaPromptFormat } from '../models/chat.js';
import type { Stage } from './types.js';

/** GMSA's autoencoding prompt (papers/gmsa.md, "Training"), the same for every method. */
export const RESTATE_INSTRUCTION = 'Restate the aforementioned text.';

/**
 * Whether an instruct model (one with a chat template) reads the restate prompt as a chat turn.
 * true: the instruction is an instruction, and the model answers it as its assistant.
 */
export const RESTATE_CHAT = true;

export interface RestateFormat {
  /** Tokens before the soft context (at least one). */
  lead: number[];
  /** Tokens between the soft context and the restated passage. */
  prompt: number[];
  /** The token that ends the restated passage (EOS; for a chat, its end of turn). */
  end: number;
  /** Whether the model's chat template wraps it. */
  chat: boolean;
}

/** Marks where the soft context goes in a rendered chat (never a real text). */
const SOFT_MARK = '\u0000softpress-context\u0000';

const restateCache = new WeakMap<Tokenizer, RestateFormat>();

/** The restate format of a tokenizer (see the module comment). */
export function restateFormat(tok: Tokenizer): RestateFormat {
  let f = restateCache.get(tok);
  if (f) return f;
  if (tok.chatTemplate && RESTATE_CHAT) {
    const r = renderChat(tok, [{ role: 'user', content: `${SOFT_MARK}\n${RESTATE_INSTRUCTION}` }]);
    const at = r.text.indexOf(SOFT_MARK);
    if (at < 0 || r.text.indexOf(SOFT_MARK, at + 1) >= 0) throw new Error('restate prompt: the chat template did not render the user turn once');
    const head = r.text.slice(0, at);
    const tail = r.text.slice(at + SOFT_MARK.length);
    // The chat's text holds its special tokens as text: encode them as tokens.
    const lead = tok.encode(head, { allowSpecial: true });
    f = { lead: lead.length ? lead : [tok.bos], prompt: tok.encode(tail, { allowSpecial: true }), end: endOfAssistantTurn(tok), chat: true };
  } else {
    f = { lead: [tok.bos], prompt: tok.encode(`\n${RESTATE_INSTRUCTION}\n`), end: tok.eos, chat: false };
  }
  restateCache.set(tok, f);
  return f;
}

/**
 * The token the chat template closes an assistant turn with (ChatML: <|im_end|>; Llama 3:
 * <|eot_id|>): the first special token after the assistant's text; EOS when there is none.
 */
function endOfAssistantTurn(tok: Tokenizer): number {
  const r = renderChat(tok, [
    { role: 'user', content: 'a' },
    { role: 'assistant', content: SOFT_MARK },
  ]);
  const at = r.text.lastIndexOf(SOFT_MARK);
  const specials = new Set(tok.special.values());
  const after = at < 0 ? [] : tok.encode(r.text.slice(at + SOFT_MARK.length), { allowSpecial: true });
  return after.find((id) => specials.has(id)) ?? tok.eos;
}

/** A restate example after the soft context: tail tokens and where its loss starts. */
export function restateTail(f: RestateFormat, passage: readonly number[]): { tail: number[]; lossFrom: number } {
  return { tail: [...f.prompt, ...passage, f.end], lossFrom: f.prompt.length };
}

/** The QA format of the evaluation (models/chat.ts), for training as well. */
export function qaFormat(tok: Tokenizer): QaPromptFormat {
  return qaPromptFormat(tok);
}

/** A QA example after the soft context: the question prompt, then " answer" EOS (the loss). */
export function qaTail(f: QaPromptFormat, tok: Tokenizer, question: string, answer: string): { tail: number[]; lossFrom: number } {
  const prompt = f.tail(question);
  return { tail: [...prompt, ...tok.encode(` ${answer}`), tok.eos], lossFrom: prompt.length };
}

/** The lead of continuation (lm): BOS, as a document starts. */
export function lmLead(tok: Tokenizer): number[] {
  return [tok.bos];
}

/** The lead and objective of each training stage, as the evaluation reads them. */
export function stageLead(tok: Tokenizer, stage: Stage): number[] {
  if (stage === 'ae') return restateFormat(tok).lead;
  if (stage === 'qa') return qaFormat(tok).lead;
  return lmLead(tok);
}

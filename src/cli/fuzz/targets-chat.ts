/**
 * Fuzz target for chat templates (models/chat.ts renderTemplate): the Jinja `chat_template` a
 * GGUF or tokenizer_config.json carries is untrusted input. Each case is a real template
 * (ChatML as SmolLM2 has it, Llama 3's, a Mistral-style one that refuses roles that do not
 * alternate, one with a system-prompt macro) damaged as text, with a hostile snippet spliced in
 * (unbounded or nested loops, huge ranges, doubling strings and lists, huge indent widths,
 * recursion), and/or with hostile messages. A rendering either returns text or throws a
 * ChatTemplateError; the renderer's own limits must stop every runaway template long before
 * the fuzzer's time limit. The limits are those of TEMPLATE_LIMITS scaled down 20x (the same
 * checks, so that a case that runs into one costs ~20 ms instead of ~400).
 */
import { ChatTemplateError, TEMPLATE_LIMITS, renderTemplate, type TemplateLimits } from '../../models/chat.js';
import { HOSTILE_STRINGS, INTERESTING, Rng, mutateJson, mutateText } from './mutate.js';
import type { Prepared, Target } from './target.js';

export const TEMPLATES: Record<string, string> = {
  chatml:
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}" +
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
  llama3:
    '{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}' +
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}" +
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}{{- "Today Date: " + date_string + "\\n\\n" }}{{- system_message }}{{- "<|eot_id|>" }}' +
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}" +
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}",
  alternating:
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}" +
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
  macro:
    "{% macro turn(role, text) %}<|{{ role }}|>\n{{ text | trim }}<|end|>\n{% endmacro %}{% set ns = namespace(sys='') %}" +
    "{% for m in messages if m.role == 'system' %}{% set ns.sys = ns.sys ~ m.content %}{% endfor %}{% if ns.sys %}{{ turn('system', ns.sys) }}{% endif %}" +
    "{% for m in messages if m.role != 'system' %}{{ turn(m.role, m.content) }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}{{ messages | length }} {{ messages | tojson }}",
};

const MESSAGES = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'How many ships were at anchor?' },
  { role: 'assistant', content: 'Twelve.' },
  { role: 'user', content: 'And boats?' },
];

/** Snippets of runaway templates; N and K are filled with interesting integers. */
const SNIPPETS = [
  '{% for i in range(N) %}x{% endfor %}',
  '{% for i in range(N) %}{% for j in range(N) %}{% for k in range(N) %}{{ i }}{% endfor %}{% endfor %}{% endfor %}',
  '{% for i in range(K) %}{% for j in range(K) %}{% for k in range(K) %}{% for l in range(K) %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}',
  '{{ range(N)|length }}',
  '{{ range(0, N, K)|join(",") }}',
  "{{ 'a\nb'|indent(N) }}",
  '{{ messages|tojson(indent=N) }}',
  "{% set ns = namespace(s='ab') %}{% for i in range(K) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
  "{% set ns = namespace(s='a') %}{% for i in range(K) %}{% set ns.s = ns.s.replace('a', 'aaaa') %}{% endfor %}{{ ns.s }}",
  "{% set ns = namespace(s='ab') %}{% for i in range(K) %}{% set ns.s = ns.s.replace('', 'xy') %}{% endfor %}",
  '{% set ns = namespace(l=[1]) %}{% for i in range(K) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}',
  '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}',
  '{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(K) }}',
  '{{ N ** K }}',
  "{{ 'x' * N }}",
  '{% for m in messages %}{% for m2 in messages %}{% for i in range(N) %}{{ m2.content }}{% endfor %}{% endfor %}{% endfor %}',
  "{{ raise_exception('refused') }}",
];

function snippet(rng: Rng): string {
  const n = () => String(rng.chance(0.7) ? rng.pick(INTERESTING) : rng.int(100_000));
  const k = () => String(rng.chance(0.5) ? rng.pick([2, 3, 10, 20, 30, 40, 64, 100]) : rng.int(200));
  return rng
    .pick(SNIPPETS)
    .replace(/\bN\b/g, () => (rng.chance(0.2) ? '10**9' : n()))
    .replace(/\bK\b/g, k);
}

/** The limits the fuzzer renders under: TEMPLATE_LIMITS with time and steps scaled down 20x. */
export const FUZZ_TEMPLATE_LIMITS: TemplateLimits = {
  ...TEMPLATE_LIMITS,
  timeMs: TEMPLATE_LIMITS.timeMs / 20,
  steps: TEMPLATE_LIMITS.steps / 20,
  chars: TEMPLATE_LIMITS.chars / 4,
};

interface ChatCase {
  template: string;
  messages: unknown;
}

export const chatTemplate: Target = {
  name: 'chat-template',
  about: 'chat templates (models/chat.ts)',
  timeoutMs: 5000,
  prepare(): Prepared {
    const names = Object.keys(TEMPLATES);
    return {
      make: (rng): ChatCase => {
        let template = TEMPLATES[rng.pick(names)];
        let messages: unknown = MESSAGES.slice(0, 1 + rng.int(MESSAGES.length));
        const r = rng.next();
        if (r < 0.3) {
          for (let k = 1 + rng.int(3); k > 0; k--) template = mutateText(template, rng);
        } else if (r < 0.65) {
          // a snippet spliced in at a tag boundary (or anywhere)
          const cuts = [0, template.length, ...[...template.matchAll(/[%}]}/g)].map((m) => m.index + 2)];
          const at = rng.chance(0.8) ? rng.pick(cuts) : rng.int(template.length + 1);
          template = template.slice(0, at) + snippet(rng) + template.slice(at);
        }
        if (r >= 0.65 || rng.chance(0.2)) {
          if (rng.chance(0.2)) messages = [{ role: 'user', content: rng.pick(HOSTILE_STRINGS) }];
          for (let k = 1 + rng.int(2); k > 0; k--) messages = mutateJson(messages, rng);
        }
        return { template, messages };
      },
      run: (input) => {
        const c = input as ChatCase;
        renderTemplate(c.template, { messages: c.messages, add_generation_prompt: true, bos_token: '<s>', eos_token: '</s>' }, FUZZ_TEMPLATE_LIMITS);
      },
      clean: (e) => e instanceof ChatTemplateError,
      bytes: (input) => new TextEncoder().encode(JSON.stringify(input)),
    };
  },
};

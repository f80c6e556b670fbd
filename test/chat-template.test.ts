// Chat templates are untrusted input (they come with a GGUF or a tokenizer_config.json):
// renderTemplate renders real templates exactly as @huggingface/jinja does, and stops runaway
// ones (huge ranges, nested loops, doubling strings and lists, huge widths, recursion) quickly,
// with a ChatTemplateError whose message starts with "chat template" (the server's 400).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Template } from '@huggingface/jinja';
import { ChatTemplateError, TEMPLATE_LIMITS, renderChat, renderTemplate } from '../src/models/chat.js';
import type { Tokenizer } from '../src/models/tokenizer.js';
import { TEMPLATES } from '../src/cli/fuzz/targets-chat.js';

const MESSAGES = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'How many ships?' },
  { role: 'assistant', content: 'Twelve.' },
  { role: 'user', content: 'And boats?' },
];

test('real chat templates render as the library renders them', () => {
  for (const [name, source] of Object.entries(TEMPLATES)) {
    for (const messages of [MESSAGES, MESSAGES.slice(1)]) {
      const items = { messages, add_generation_prompt: true, bos_token: '<s>', eos_token: '</s>' };
      let want: string | Error;
      try {
        want = new Template(source).render(items);
      } catch (e) {
        want = e as Error;
      }
      if (want instanceof Error) {
        assert.throws(
          () => renderTemplate(source, items),
          (e: Error) => e instanceof ChatTemplateError && e.message.includes(want.message),
          name,
        );
      } else {
        assert.equal(renderTemplate(source, items), want, name);
      }
    }
  }
});

const RUNAWAY: Record<string, [string, RegExp]> = {
  'range(10**9)': ['{% for i in range(10**9) %}x{% endfor %}', /range\(\) of 1000000000 numbers/],
  'nested loops': ['{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}', /steps|ms/],
  'a long loop of text': [
    '{% for a in range(100000) %}{% for b in range(100) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}',
    /produced more than/,
  ],
  'string multiplication': ["{{ 'a' * 10**9 }}", /rendering failed/],
  'huge indent': ["{{ 'a\nb'|indent(10**8) }}", /an argument of 100000000/],
  'huge tojson indent': ['{{ messages|tojson(indent=10**8) }}', /an argument of 100000000/],
  'doubling string': [
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    /a string of \d+ characters/,
  ],
  'growing replace': [
    "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('a', 'aaaa') %}{% endfor %}",
    /a string of \d+ characters/,
  ],
  'doubling list': ['{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}', /a list of \d+ items/],
  'unbounded recursion': ['{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}', /rendering failed|steps/],
  'exponential recursion': ['{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}', /steps|ms/],
};

for (const [name, [source, why]] of Object.entries(RUNAWAY)) {
  test(`a runaway chat template is stopped with a clear error: ${name}`, () => {
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    assert.throws(
      () => renderTemplate(source, { messages: MESSAGES, add_generation_prompt: true }),
      (e: Error) => e instanceof ChatTemplateError && e.message.startsWith('chat template: ') && why.test(e.message),
    );
    const ms = performance.now() - t0;
    assert.ok(ms < TEMPLATE_LIMITS.timeMs + 3000, `${ms} ms`);
    assert.ok(process.memoryUsage().rss - rss0 < 400 * 2 ** 20, `RSS grew by ${(process.memoryUsage().rss - rss0) / 2 ** 20} MiB`);
  });
}

test('the time limit holds on its own, and the character limit grows with the messages', () => {
  const nested = '{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}';
  const t0 = performance.now();
  assert.throws(() => renderTemplate(nested, {}, { timeMs: 50, steps: 1e12 }), /rendering stopped after 50 ms/);
  assert.ok(performance.now() - t0 < 2000);
  // a template that shows each message three times renders a long conversation
  const long = 'x'.repeat(2 * TEMPLATE_LIMITS.chars);
  const out = renderTemplate('{% for m in messages %}{{ m.content }}{{ m.content }}{{ m.content }}{% endfor %}', {
    messages: [{ role: 'user', content: long }],
  });
  assert.equal(out.length, 3 * long.length);
  assert.throws(() => renderTemplate('x'.repeat(TEMPLATE_LIMITS.sourceChars + 1), {}), /more than the limit/);
});

test('renderChat refuses a runaway template of a tokenizer with a ChatTemplateError (the server answers 400 chat_template_error)', () => {
  const tokenizer = { chatTemplate: '{% for i in range(10**9) %}{% endfor %}', special: new Map([['<s>', 1]]), bos: 1, eos: 2 } as unknown as Tokenizer;
  assert.throws(
    () => renderChat(tokenizer, [{ role: 'user', content: 'hi' }]),
    (e: Error) => e instanceof ChatTemplateError && e.message.startsWith('chat template'),
  );
  const ok = { ...tokenizer, chatTemplate: TEMPLATES.chatml } as unknown as Tokenizer;
  assert.match(renderChat(ok, [{ role: 'user', content: 'hi' }]).text, /<\|im_start\|>user\nhi<\|im_end\|>\n<\|im_start\|>assistant\n$/);
});

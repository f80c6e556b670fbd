/**
 * The playground end to end in headless Chromium (playwright-core driving Debian's
 * /usr/bin/chromium): paste a document, compress it, see the token counts and time, ask a
 * question, see the soft-context answer beside the full-context answer with both latencies;
 * then upload a document too long for the window and see the full context reported as n/a.
 * On a server with API keys: the page asks for the key, reports a wrong one (401), works with the
 * right one, and keeps it in the page only (no storage, not in the DOM); the contexts are the key's.
 * Skipped, with the reason, when Chromium is not installed (scripts/setup.sh installs it).
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Page } from 'playwright-core';

import { openService, type SoftpressService } from '../src/serve/service.js';
import { buildServer, type ServerOptions } from '../src/serve/server.js';
import { ANONYMOUS, KeyRing, ownerOf } from '../src/serve/auth.js';
import { writeRandomBase } from '../src/serve/testing.js';
import { waitFor } from './helpers/wait.js';

const CHROMIUM = process.env.SOFTPRESS_CHROMIUM ?? '/usr/bin/chromium';
const skip =
  process.env.SOFTPRESS_BROWSER_TESTS === '0'
    ? 'SOFTPRESS_BROWSER_TESTS=0'
    : existsSync(CHROMIUM)
      ? false
      : `Chromium not found at ${CHROMIUM}: install it with 'apt-get install chromium' (npm test's set-up does) or set SOFTPRESS_CHROMIUM`;

const DOC =
  'The lighthouse keeper wrote in the log every evening. On the ninth of March the secret code of the blue box was 4817, ' +
  'and the keeper hid the box under the third stair. Ships passed in the fog, and the bell rang twice an hour.';

const LATENCY = /^\d+(\.\d+)? m?s$/;
/** The page updates asynchronously: polled every 50 ms for up to 30 s. */
const BROWSER_WAIT = { timeoutMs: 30_000, everyMs: 50 };

async function waitText(page: Page, selector: string, re: RegExp): Promise<void> {
  let last = '';
  await waitFor(
    async () => re.test((last = (await page.textContent(selector)) ?? '')),
    () => `${selector} to match ${re} (last: '${last}')`,
    BROWSER_WAIT,
  );
}

/** A server on a small random base model and a headless Chromium; closes both after `body`. */
async function withPlayground(serverOpts: ServerOptions, body: (page: Page, service: SoftpressService, problems: string[]) => Promise<void>): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'softpress-browser-'));
  const base = writeRandomBase(join(tmp, 'base'), { window: 256 });
  const service = openService({ base, storePath: join(tmp, 'store', 'contexts.mdb'), storeMaxBytes: 64 * 2 ** 20, discover: false });
  const app = buildServer(service, serverOpts);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/`;
  const browser = await chromium.launchPersistentContext(join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = browser.pages()[0] ?? (await browser.newPage());
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    await page.goto(url);
    await body(page, service, problems);
  } finally {
    await browser.close();
    app.server.closeAllConnections();
    await app.close();
    await service.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}

test('playground: compress, ask, compare with the full context (headless Chromium)', { skip, timeout: 120_000 }, async () => {
  await withPlayground({}, async (page, service, problems) => {
    await page.waitForSelector('#method option[value="truncate"]', { state: 'attached' });
    assert.match((await page.textContent('#model-info')) ?? '', /window 256 tokens/);

    // 1. a document that fits the window: soft and full answers side by side
    await page.fill('#doc', DOC);
    await page.selectOption('#method', 'truncate');
    await page.selectOption('#ratio', '4');
    await page.click('#compress');
    await waitText(page, '#full-tokens', /^\d+$/);
    const source = Number(await page.textContent('#stats-source'));
    const soft = Number(await page.textContent('#stats-soft'));
    assert.ok(source > 30, `source tokens ${source}`);
    assert.equal(soft, Math.ceil(source / 4));
    assert.match((await page.textContent('#stats-ratio')) ?? '', /^3\.\d\d×$|^4\.00×$/);
    assert.match((await page.textContent('#stats-ms')) ?? '', /^\d+ ms$/);
    assert.equal(Number(await page.textContent('#full-tokens')), source);

    await page.fill('#question', 'What is the secret code of the blue box?');
    await page.click('#ask');
    await waitText(page, '#ms-full', LATENCY);
    const softMs = (await page.textContent('#ms-soft')) ?? '';
    const fullMs = (await page.textContent('#ms-full')) ?? '';
    assert.match(softMs, LATENCY);
    assert.match(fullMs, LATENCY);
    for (const id of ['#answer-soft', '#answer-full']) {
      const a = (await page.textContent(id)) ?? '';
      assert.ok(a.length > 0 && a !== '…' && a !== '–', `${id}: '${a}'`);
    }
    assert.match((await page.textContent('#history')) ?? '', /Q: What is the secret code/);
    assert.match((await page.textContent('#prefix-note')) ?? '', /first question on a context also runs its prefix/);
    assert.equal((await page.textContent('#error'))?.trim(), '');

    // 2. an uploaded document longer than the window: the full context is n/a, the soft one works
    await page.setInputFiles('#file', { name: 'long.txt', mimeType: 'text/plain', buffer: Buffer.from(`${DOC} `.repeat(12)) });
    await waitFor(async () => (await page.inputValue('#doc')).length > 1000, 'the uploaded file in the text area', BROWSER_WAIT);
    assert.match((await page.textContent('#doc-chars')) ?? '', /long\.txt/);
    await page.selectOption('#ratio', '8');
    await page.click('#compress');
    await waitText(page, '#full-tokens', /^n\/a$/);
    assert.match((await page.textContent('#full-status')) ?? '', /n\/a: .*window is 256/);
    assert.ok(Number(await page.textContent('#stats-source')) > 256);
    await page.fill('#question', 'Where is the box?');
    await page.press('#question', 'Enter');
    await waitText(page, '#ms-full', /^n\/a$/);
    await waitText(page, '#ms-soft', LATENCY);
    assert.deepEqual(
      problems.filter((p) => !/status of 413/.test(p)),
      [],
    );
    // the playground deleted the contexts it replaced
    assert.equal(service.listContexts().length, 1);
    assert.equal(await page.isVisible('#key-box'), false, 'no key field on a server without keys');
  });
});

test(
  'playground with API keys: asks for the key, reports a wrong one, works with the right one and keeps it in the page only',
  { skip, timeout: 120_000 },
  async () => {
    const KEY = 'sk-playground-5e8a1c7d3b9f2046';
    const keys = new KeyRing([{ key: KEY, name: 'playground', origin: 'test' }]);
    await withPlayground({ keys, quotas: { contexts: 10, requestsPerMinute: 120 } }, async (page, service, problems) => {
      await page.waitForSelector('#key-box', { state: 'visible' });
      await waitText(page, '#auth-status', /needs an API key/);
      assert.equal(await page.$$eval('#method option', (o) => o.length), 0, 'nothing loaded without the key');

      await page.fill('#api-key', 'sk-wrong-key-0000000000000');
      await page.click('#use-key');
      await waitText(page, '#auth-status', /key refused/);
      await waitText(page, '#error', /refused this API key \(401\): Incorrect API key/);

      await page.fill('#api-key', KEY);
      await page.press('#api-key', 'Enter');
      await page.waitForSelector('#method option[value="truncate"]', { state: 'attached' });
      await waitText(page, '#auth-status', /key accepted/);
      assert.match((await page.textContent('#model-info')) ?? '', /window 256 tokens/);
      assert.equal((await page.textContent('#error'))?.trim(), '');

      await page.fill('#doc', DOC);
      await page.selectOption('#method', 'truncate');
      await page.click('#compress');
      await waitText(page, '#full-tokens', /^\d+$/);
      await page.fill('#question', 'What is the secret code of the blue box?');
      await page.click('#ask');
      await waitText(page, '#ms-full', LATENCY);
      assert.match((await page.textContent('#ms-soft')) ?? '', LATENCY);
      assert.equal((await page.textContent('#error'))?.trim(), '');

      // the key is in a variable of the page only
      // (a string: the tests compile without the DOM library)
      const kept = (await page.evaluate(
        "({ local: localStorage.length, session: sessionStorage.length, cookie: document.cookie, field: document.getElementById('api-key').value, html: document.documentElement.outerHTML, url: location.href })",
      )) as { local: number; session: number; cookie: string; field: string; html: string; url: string };
      assert.deepEqual([kept.local, kept.session, kept.cookie, kept.field], [0, 0, '', '']);
      assert.ok(!kept.html.includes(KEY) && !kept.url.includes(KEY));
      // the two contexts (soft and full) are the key's
      assert.equal(service.listContexts(100, ownerOf(KEY)).length, 2);
      assert.equal(service.listContexts(100, ANONYMOUS).length, 0);
      assert.deepEqual(
        problems.filter((p) => !/status of 401/.test(p)),
        [],
      );
    });
  },
);

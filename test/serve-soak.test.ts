// The soak of the server (softpress bench serve --soak), shortened: 300 requests from 8 clients,
// a fifth malformed, one kill -9 and restart on the same store. No 5xx, no acknowledged context
// lost, malformed requests answered with 4xx.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

test('bench serve --soak: 300 requests, one kill -9: no 5xx, no acknowledged context lost', () => {
  const r = spawnSync(process.execPath, ['bin/softpress.js', 'bench', 'serve', '--soak', '--requests', '300', '--kills', '1', '--json'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  const lines = r.stdout.trim().split('\n');
  const out = JSON.parse(lines[lines.length - 1]) as {
    requests: number;
    status: Record<string, number>;
    five_xx: number;
    lost: number;
    p50_ms: number;
    p99_ms: number;
    rss_mb: number[];
  };
  assert.deepEqual(Object.keys(out), ['requests', 'status', 'five_xx', 'lost', 'p50_ms', 'p99_ms', 'rss_mb']);
  assert.equal(out.requests, 300);
  assert.equal(
    Object.values(out.status).reduce((a, b) => a + b, 0),
    300,
  );
  assert.equal(out.five_xx, 0);
  assert.equal(out.lost, 0);
  assert.ok((out.status['201'] ?? 0) > 0, 'contexts were created');
  assert.ok((out.status['400'] ?? 0) + (out.status['413'] ?? 0) + (out.status['415'] ?? 0) > 0, 'malformed requests were refused');
  assert.match(r.stderr, /kill -9 of the server after \d+ requests/);
  assert.match(r.stderr, /restarted: \d+ acknowledged contexts all answer/);
  assert.equal(out.rss_mb.length, 1);
  assert.ok(out.p99_ms >= out.p50_ms);
});

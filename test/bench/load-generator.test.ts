/** HTTP load generator for the gateway benchmark (bench/support/load-generator.ts), against a real local server. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { closedLoop, openLoop, quantile, type LoadRequest } from '../../bench/support/load-generator.ts';

/**
 * Paths: /ok → 200 with a small body; /fail → 500; /stall → 200 after 200 ms; /slow → 200 after 300 ms;
 * /drop → socket destroyed without a response; /hang → never answers. Every request's x-i header is recorded.
 */
const seenIndexes: number[] = [];
const timers = new Set<NodeJS.Timeout>();
const later = (ms: number, fn: () => void): void => { const t = setTimeout(() => { timers.delete(t); fn(); }, ms); timers.add(t); };
const server = http.createServer((req, res) => {
  seenIndexes.push(Number(req.headers['x-i']));
  req.resume();
  req.on('end', () => {
    const reply = (status: number): void => { res.writeHead(status, { 'content-type': 'text/plain' }).end('x'.repeat(1000)); };
    switch (req.url) {
      case '/fail': return reply(500);
      case '/stall': return later(200, () => reply(200));
      case '/slow': return later(300, () => reply(200));
      case '/drop': return void req.socket.destroy();
      case '/hang': return;
      default: return reply(200);
    }
  });
});
let url = '';
before(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  for (const t of timers) clearTimeout(t);
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

const get = (path: string, i: number): LoadRequest => ({ method: 'GET', path, headers: { 'x-i': String(i) } });
const maxOf = (xs: readonly number[]): number => xs.reduce((m, x) => Math.max(m, x), -Infinity);

describe('closedLoop', () => {
  test('counts every request and every status, and hands each running index out once', async () => {
    seenIndexes.length = 0;
    const r = await closedLoop({ url, clients: 4, requests: 50, request: (i) => get(i % 5 === 0 ? '/fail' : '/ok', i) });
    assert.equal(r.sent, 50);
    assert.equal(r.completed, 50);
    assert.equal(r.ok, 40);
    assert.deepEqual(r.statuses, { '200': 40, '500': 10 });
    assert.equal(r.errors, 0);
    assert.deepEqual(r.errorMessages, []);
    assert.equal(r.latenciesMs.length, 50);
    assert.ok(r.latenciesMs.every((ms) => ms > 0));
    assert.deepEqual([...seenIndexes].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
    assert.ok(Math.abs(r.throughputRps - r.ok / r.durationS) < 1e-9);
  });

  test('sends exactly `requests` requests even with more clients than requests left', async () => {
    const r = await closedLoop({ url, clients: 8, requests: 13, request: (i) => ({ method: 'POST', path: '/ok', body: `{"i":${i}}` }) });
    assert.equal(r.sent, 13);
    assert.equal(r.completed, 13);
    assert.equal(r.ok, 13);
  });

  test('stops after durationMs and lets the requests in flight finish and count', async () => {
    const r = await closedLoop({ url, clients: 2, durationMs: 150, request: (i) => get('/ok', i) });
    assert.ok(r.sent > 2);
    assert.equal(r.completed, r.sent);
    assert.ok(r.durationS >= 0.15);
  });

  test('counts destroyed sockets as errors with their message, not as responses', async () => {
    const r = await closedLoop({ url, clients: 2, requests: 20, request: (i) => get(i % 4 === 0 ? '/drop' : '/ok', i) });
    assert.equal(r.sent, 20);
    assert.equal(r.errors, 5);
    assert.equal(r.completed, 15);
    assert.equal(r.latenciesMs.length, 15);
    assert.ok(r.errorMessages.length >= 1 && r.errorMessages.length <= 5);
  });

  test('counts a request with no answer within timeoutMs as an error', async () => {
    const r = await closedLoop({ url, clients: 1, requests: 2, timeoutMs: 100, request: (i) => get(i === 0 ? '/hang' : '/ok', i) });
    assert.equal(r.errors, 1);
    assert.equal(r.ok, 1);
    assert.deepEqual(r.errorMessages, ['timeout after 100 ms']);
  });
});

describe('openLoop', () => {
  test('sends about rate × duration requests', async () => {
    const r = await openLoop({ url, ratePerS: 200, durationMs: 500, request: (i) => get('/ok', i) });
    assert.ok(Math.abs(r.sent - 100) <= 5, `sent ${r.sent}`);
    assert.equal(r.completed, r.sent);
    assert.equal(r.ok, r.sent);
    assert.ok(r.durationS >= 0.49 && r.durationS < 1.5, `durationS ${r.durationS}`);
  });

  test('latency includes a server stall', async () => {
    const r = await openLoop({ url, ratePerS: 100, durationMs: 200, request: (i) => get(i === 5 ? '/stall' : '/ok', i) });
    assert.equal(r.completed, r.sent);
    assert.ok(maxOf(r.latenciesMs) >= 200, `max ${maxOf(r.latenciesMs)}`);
  });

  test('latency is taken from the scheduled send time when the generator itself falls behind', async () => {
    // Request 0 blocks the event loop for 100 ms; requests 1..9 (due every 10 ms) go out late, all at once.
    const r = await openLoop({ url, ratePerS: 100, durationMs: 200, request: (i) => {
      if (i === 0) { const until = performance.now() + 100; while (performance.now() < until); }
      return get('/ok', i);
    } });
    assert.equal(r.completed, r.sent);
    assert.ok(r.latenciesMs.filter((ms) => ms >= 50).length >= 4, `latencies ${r.latenciesMs.map((ms) => ms.toFixed(1)).join(' ')}`);
  });

  test('beyond maxInFlight a request counts as a "max in flight" error', async () => {
    const r = await openLoop({ url, ratePerS: 100, durationMs: 100, maxInFlight: 3, request: (i) => get('/slow', i) });
    assert.equal(r.sent, 10);
    assert.equal(r.completed, 3);
    assert.equal(r.errors, 7);
    assert.deepEqual(r.errorMessages, ['max in flight']);
  });
});

describe('quantile', () => {
  test('interpolates linearly between order statistics of unsorted input', () => {
    const v = [4, 1, 3, 2];
    assert.equal(quantile(v, 0), 1);
    assert.equal(quantile(v, 1), 4);
    assert.equal(quantile(v, 0.5), 2.5);
    assert.ok(Math.abs(quantile(v, 0.9) - 3.7) < 1e-12);
    assert.equal(quantile([1, 2, 3, 4, 5], 0.25), 2);
    assert.deepEqual(v, [4, 1, 3, 2]);
  });

  test('a single value is every quantile, and an empty table gives NaN', () => {
    assert.equal(quantile([7], 0.3), 7);
    assert.ok(Number.isNaN(quantile([], 0.5)));
  });
});

describe('option validation', () => {
  const request = (i: number): LoadRequest => get('/ok', i);
  test('invalid options throw RangeError before anything is sent', () => {
    assert.throws(() => closedLoop({ url, clients: 0, requests: 1, request }), RangeError);
    assert.throws(() => closedLoop({ url, clients: 1.5, requests: 1, request }), RangeError);
    assert.throws(() => closedLoop({ url, clients: 1, request }), RangeError);
    assert.throws(() => closedLoop({ url, clients: 1, requests: -1, request }), RangeError);
    assert.throws(() => closedLoop({ url, clients: 1, durationMs: NaN, request }), RangeError);
    assert.throws(() => closedLoop({ url: 'https://127.0.0.1:1', clients: 1, requests: 1, request }), RangeError);
    assert.throws(() => closedLoop({ url: 'not a url', clients: 1, requests: 1, request }), RangeError);
    assert.throws(() => openLoop({ url, ratePerS: 0, durationMs: 100, request }), RangeError);
    assert.throws(() => openLoop({ url, ratePerS: Infinity, durationMs: 100, request }), RangeError);
    assert.throws(() => openLoop({ url, ratePerS: 10, durationMs: -5, request }), RangeError);
    assert.throws(() => openLoop({ url, ratePerS: 10, durationMs: 100, maxInFlight: 0, request }), RangeError);
    assert.throws(() => openLoop({ url, ratePerS: 10, durationMs: 100, timeoutMs: 0, request }), RangeError);
    assert.throws(() => quantile([1], 1.5), RangeError);
    assert.throws(() => quantile([1], NaN), RangeError);
  });
});

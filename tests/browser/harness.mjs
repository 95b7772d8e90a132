// Shared pieces of the browser tests: real gateway processes, a loopback load balancer that
// fails over between them (and can be paused), the demo example as publisher and token
// minter, a publisher of single events (amqplib), and headless Chromium driven by playwright-core. Everything is loopback-only and
// every wait has a deadline.

import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import amqp from 'amqplib';
import { chromium } from 'playwright-core';

const execFileP = promisify(execFile);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const GATEWAY = path.join(ROOT, 'target', 'debug', 'realtime-gateway');
const DEMO = path.join(ROOT, 'target', 'debug', 'examples', 'demo');
export const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
export const SECRET = 'browser-test-secret-0123456789abcdef';
const AMQP_URL = process.env.GATEWAY_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function unique(prefix) {
  return `test.${prefix}.${Math.random().toString(16).slice(2, 10)}`;
}

/** A free loopback port (bound and released; fine for tests on one machine). */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

/** Polls `fn` until it returns a truthy value or the deadline passes. */
export async function until(what, fn, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function status(url) {
  try {
    const r = await fetch(url);
    return r.status;
  } catch {
    return 0;
  }
}

/** Starts a gateway process; resolves once `/readyz` answers 200. */
export async function startGateway({ exchange, env = {} }) {
  const port = await freePort();
  const child = spawn(GATEWAY, [], {
    env: {
      PATH: process.env.PATH,
      GATEWAY_LISTEN: `127.0.0.1:${port}`,
      GATEWAY_AMQP_URL: AMQP_URL,
      GATEWAY_AMQP_EXCHANGE: exchange,
      GATEWAY_AMQP_QUEUE: `${exchange}.${port}`,
      GATEWAY_AMQP_QUEUE_EXPIRES_SECS: '10',
      GATEWAY_JWT_SECRET: SECRET,
      GATEWAY_SHUTDOWN_DRAIN_SECS: '0',
      GATEWAY_SHUTDOWN_GRACE_SECS: '5',
      GATEWAY_LOG: 'warn',
      // These pages count every progress tick and every resumed event, which conflation
      // would (rightly) thin out; and streams outlive a test run, so none is declared
      // here (the Rust tests cover conflation and both streams).
      GATEWAY_CONFLATE: 'off',
      GATEWAY_HISTORY_STREAM: 'off',
      GATEWAY_REVOCATION_USER_KEYS: 'off',
      GATEWAY_REVOCATION_TENANT_KEYS: 'off',
      ...env,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await until(`gateway on ${port} ready`, async () => (await status(`${url}/readyz`)) === 200);
  return {
    port,
    url,
    child,
    async metric(series) {
      const text = await (await fetch(`${url}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line ? Number(line.slice(series.length + 1)) : NaN;
    },
    /** SIGTERM, then wait for a clean exit. */
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const [code] = await Promise.race([
        once(child, 'exit'),
        sleep(15000).then(() => {
          child.kill('SIGKILL');
          throw new Error('gateway did not exit within 15 s of SIGTERM');
        }),
      ]);
      return code;
    },
  };
}

/**
 * A TCP load balancer on loopback: each new connection goes to the first upstream that
 * accepts it. `pause()` refuses new connections (existing ones are untouched) so a test can
 * hold a browser's reconnect until events have been published.
 */
export async function startBalancer(ports) {
  let paused = false;
  const sockets = new Set();
  const server = net.createServer((client) => {
    if (paused) {
      client.destroy();
      return;
    }
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    const tryUpstream = (i) => {
      if (i >= ports.length) {
        client.destroy();
        return;
      }
      const up = net.connect(ports[i], '127.0.0.1');
      up.once('error', () => {
        up.destroy();
        tryUpstream(i + 1);
      });
      up.once('connect', () => {
        up.removeAllListeners('error');
        client.pipe(up);
        up.pipe(client);
        const end = () => {
          client.destroy();
          up.destroy();
        };
        up.on('error', end);
        up.on('close', end);
        client.on('error', end);
        client.on('close', end);
      });
    };
    tryUpstream(0);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
    },
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** A development token for (tenant, user), minted by the demo example. */
export async function token(tenant, user) {
  const { stdout } = await execFileP(DEMO, ['token', '--tenant', tenant, '--user', user, '--secret', SECRET]);
  return stdout.trim();
}

/**
 * Publishes the demo's render sequence (queued, started, progress 25/50/75, completed,
 * notification) for (tenant, user) to `exchange`; returns the published event ids in order.
 */
export async function publishSequence({ exchange, tenant, user }) {
  const { stderr } = await execFileP(DEMO, [
    'publish',
    '--exchange', exchange,
    '--tenant', tenant,
    '--user', user,
    '--amqp-url', AMQP_URL,
  ]);
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('published '))
    .map((l) => JSON.parse(l.split(' ')[2]));
}

/** A catalog envelope as FlatRender's producers publish it. */
export function catalogEvent(eventType, { tenant, user }, data) {
  return {
    event_id: `evt-${Math.random().toString(16).slice(2)}${Date.now().toString(16)}`,
    event_type: eventType,
    event_time: new Date().toISOString(),
    tenant_id: tenant,
    user_id: user,
    trace_id: 'trace-browser-test',
    correlation_id: 'corr-browser-test',
    producer: 'browser-test',
    data,
  };
}

/**
 * Publishes `events` (envelopes) to `exchange` in order, each routed by its type with the
 * catalog's headers, as the demo does; resolves once the broker confirmed them all.
 */
export async function publishEvents(exchange, events) {
  const conn = await amqp.connect(AMQP_URL);
  try {
    const ch = await conn.createConfirmChannel();
    await ch.assertExchange(exchange, 'topic', { durable: true });
    for (const e of events) {
      ch.publish(exchange, e.event_type, Buffer.from(JSON.stringify(e)), {
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        headers: { 'x-event-type': e.event_type, 'x-tenant-id': e.tenant_id },
      });
    }
    await ch.waitForConfirms();
  } finally {
    await conn.close();
  }
  return events.map((e) => e.event_id);
}

/** Headless Chromium as this machine runs it: no sandbox (root), no background traffic. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

const STUDIO_DIR = path.join(ROOT, 'examples', 'nextjs-studio');

/**
 * Starts the built examples/nextjs-studio (`next start`) on a free loopback port with the
 * given environment (REALTIME_URL, REALTIME_TRANSPORT, ...); resolves once it serves.
 */
export async function startStudio(env = {}) {
  const port = await freePort();
  const child = spawn(path.join(STUDIO_DIR, 'node_modules', '.bin', 'next'), ['start', '-p', String(port), '-H', '127.0.0.1'], {
    cwd: STUDIO_DIR,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      NODE_ENV: 'production',
      NEXT_TELEMETRY_DISABLED: '1',
      REALTIME_JWT_SECRET: SECRET,
      ...env,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await until(`studio on ${port}`, async () => (await status(`${url}/api/realtime-token`)) !== 0, 60000);
  return {
    url,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await Promise.race([once(child, 'exit'), sleep(10000).then(() => child.kill('SIGKILL'))]);
    },
  };
}

/**
 * The gateway under test speaks the browser protocol (token in the WebSocket subprotocol,
 * `GET /auth/check`, SSE heartbeats, CORS for token requests). It always does now: a 404
 * here fails the test rather than quietly running the older, query-token path.
 */
export async function gatewayHasAuthCheck(url) {
  const s = await status(`${url}/auth/check`);
  if (s === 404) {
    throw new Error(`${url}/auth/check answered 404: the gateway lacks the browser protocol`);
  }
  return true;
}

/**
 * A loopback HTTP proxy in front of a gateway that can refuse WebSocket upgrades, as a
 * corporate proxy does (403 to the upgrade, plain requests pass). `allow()` lifts it.
 */
export async function startUpgradeBlocker(upstreamPort) {
  let blocking = true;
  const sockets = new Set();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => client.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0 && head.length < 65536) return;
      client.off('data', onData);
      if (blocking && /^upgrade:\s*websocket/im.test(head.subarray(0, end).toString('latin1'))) {
        client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      const up = net.connect(upstreamPort, '127.0.0.1', () => {
        up.write(head);
        client.pipe(up);
        up.pipe(client);
      });
      const end2 = () => {
        client.destroy();
        up.destroy();
      };
      up.on('error', end2);
      up.on('close', end2);
      client.on('close', end2);
    };
    client.on('data', onData);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    allow() {
      blocking = false;
    },
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

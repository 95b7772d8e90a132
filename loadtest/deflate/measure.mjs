// The gateway's resident memory and CPU per WebSocket connection, with permessage-deflate
// negotiated (`on`) or not (`off`): N clients of Node's `ws` (whose deflate is zlib's),
// each its own user of tenant `t`, then E tenant-wide render.job.progress.v1 events to all
// of them. Loopback only; run by run.sh, which starts the gateway.
// usage: node measure.mjs PORT EXCHANGE GATEWAY_PID on|off N E
import crypto from 'node:crypto';
import fs from 'node:fs';
import WebSocket from 'ws';
import amqp from 'amqplib';
const [port, exchange, pid, deflate, n, events] = process.argv.slice(2);
const N = Number(n), E = Number(events);
const SECRET = 'measure-secret-0123456789abcdef0123';
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const token = (u) => { const now = Math.floor(Date.now() / 1000); const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: u, tenant_id: 't', exp: now + 600 })}`; return `${body}.${crypto.createHmac('sha256', SECRET).update(body).digest('base64url')}`; };
const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const cpuTicks = () => { const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return Number(f[11]) + Number(f[12]); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rss0 = rssKiB();
let got = 0;
const socks = [];
for (let i = 0; i < N; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, N - i) }, (_, j) => new Promise((res, rej) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Authorization: `Bearer ${token(`u${i + j}`)}` }, perMessageDeflate: deflate === 'on' });
    ws.on('open', () => { if (deflate === 'on' && !ws.extensions) rej(new Error('not negotiated')); res(); });
    ws.on('message', () => { got++; });
    ws.on('error', rej);
    socks.push(ws);
  })));
}
await sleep(2000);
const rss1 = rssKiB();
const conn = await amqp.connect('amqp://guest:guest@127.0.0.1:5672');
const ch = await conn.createChannel();
const uuid = () => crypto.randomUUID();
const cpu0 = cpuTicks();
for (let i = 0; i < E; i++) {
  const ev = { event_id: uuid(), event_type: 'render.job.progress.v1', event_time: '2026-05-27T10:15:00Z', tenant_id: 't', trace_id: uuid(), correlation_id: uuid(), producer: 'render-orchestrator', data: { job_id: uuid(), progress: i % 101, frame: i * 4, total_frames: 400 } };
  ch.publish(exchange, 'render.job.progress.v1', Buffer.from(JSON.stringify(ev)));
  await sleep(20);
}
const deadline = Date.now() + 30000;
while (got < N * E && Date.now() < deadline) await sleep(50);
const cpu1 = cpuTicks();
console.log(JSON.stringify({ deflate, connections: N, events: E, delivered: got, rss_per_conn_kib: ((rss1 - rss0) / N).toFixed(2), cpu_us_per_delivery: ((cpu1 - cpu0) * 10000 / got).toFixed(2), load: fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') }));
await ch.close(); await conn.close();
for (const s of socks) s.terminate();
process.exit(0);

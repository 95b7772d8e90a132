/**
 * The studio's stand-in for real sign-in: a signed `studio_session` cookie naming a
 * tenant and a user, and the HS256 realtime tokens minted for it. Server-only.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SESSION_COOKIE = 'studio_session';

export interface Session {
  tenant: string;
  user: string;
}

/** Shared with the gateway (`GATEWAY_JWT_SECRET`); never sent to the browser. */
function secret(): string {
  const value = process.env.REALTIME_JWT_SECRET;
  if (!value) throw new Error('REALTIME_JWT_SECRET is not set');
  return value;
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

function sign(purpose: string, payload: string): string {
  return createHmac('sha256', secret()).update(`${purpose}:${payload}`).digest('base64url');
}

const ID = /^[A-Za-z0-9_-]{1,64}$/;

export function sessionCookie(session: Session): string {
  const payload = `${session.tenant}.${session.user}`;
  return `${payload}.${sign('session', payload)}`;
}

export function readSession(cookie: string | undefined): Session | null {
  const [tenant, user, mac] = (cookie ?? '').split('.');
  if (!tenant || !user || !mac || !ID.test(tenant) || !ID.test(user)) return null;
  const expected = Buffer.from(sign('session', `${tenant}.${user}`));
  const given = Buffer.from(mac);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return null;
  return { tenant, user };
}

export function validId(value: string | null): value is string {
  return value !== null && ID.test(value);
}

/** A realtime token for the session: `sub` is the user, `tenant_id` the tenant. */
export function mintRealtimeToken(session: Session, nowSecs = Math.floor(Date.now() / 1000)): string {
  const ttl = Number(process.env.REALTIME_TOKEN_TTL_SECS ?? 300);
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(
    JSON.stringify({ sub: session.user, tenant_id: session.tenant, iat: nowSecs, exp: nowSecs + ttl }),
  );
  const mac = createHmac('sha256', secret()).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${mac}`;
}

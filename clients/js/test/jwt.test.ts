import { describe, expect, it } from 'vitest';
import { decodeTokenTimes, MIN_REFRESH_DELAY_MS, refreshDelay } from '../src/jwt.js';
import { RecentIds } from '../src/recent.js';
import { jwt } from './fakes.js';

describe('decodeTokenTimes', () => {
  it('reads exp and iat from the base64url payload', () => {
    expect(decodeTokenTimes(jwt({ sub: 'u', iat: 100, exp: 700 }))).toEqual({ iat: 100, exp: 700 });
  });

  it('copes with non-ASCII claims and base64url characters', () => {
    // "name" makes the payload contain '-'/'_' once encoded and needs UTF-8 decoding.
    const token = jwt({ name: 'Zoë ✓ ~~~???>>>', exp: 42 });
    expect(token.split('.')[1]).toMatch(/[-_]/);
    expect(decodeTokenTimes(token)).toEqual({ exp: 42 });
  });

  it('returns {} for anything that is not a JWT', () => {
    expect(decodeTokenTimes('opaque-token')).toEqual({});
    expect(decodeTokenTimes('a.!!!.c')).toEqual({});
    expect(decodeTokenTimes(jwt({ exp: 'soon' }))).toEqual({});
  });
});

describe('refreshDelay', () => {
  const now = 1_000_000; // seconds
  const ms = now * 1000;

  it('is null without exp', () => {
    expect(refreshDelay({}, ms, 60_000)).toBeNull();
  });

  it('picks the sooner of exp - margin and 80 % of the lifetime', () => {
    expect(refreshDelay({ iat: now, exp: now + 600 }, ms, 60_000)).toBe(480_000); // 80 %
    expect(refreshDelay({ iat: now, exp: now + 3600 }, ms, 60_000)).toBe(2_880_000); // 80 %
    expect(refreshDelay({ iat: now, exp: now + 200 }, ms, 60_000)).toBe(140_000); // margin
    expect(refreshDelay({ exp: now + 600 }, ms, 60_000)).toBe(480_000); // no iat: lifetime from now
  });

  it('trusts the token lifetime when the browser clock is off', () => {
    const token = { iat: now, exp: now + 600 };
    expect(refreshDelay(token, ms + 3_600_000, 60_000)).toBe(480_000); // clock 1 h ahead
    expect(refreshDelay(token, ms - 3_600_000, 60_000)).toBe(480_000); // clock 1 h behind
  });

  it('never goes below the minimum, so a dead token cannot spin', () => {
    expect(refreshDelay({ exp: now - 10 }, ms, 60_000)).toBe(MIN_REFRESH_DELAY_MS);
    expect(refreshDelay({ iat: now, exp: now + 2 }, ms, 60_000)).toBe(MIN_REFRESH_DELAY_MS);
  });
});

describe('RecentIds', () => {
  it('forgets the oldest id once full', () => {
    const ids = new RecentIds(2);
    expect(ids.add('a')).toBe(true);
    expect(ids.add('b')).toBe(true);
    expect(ids.add('a')).toBe(false);
    expect(ids.add('c')).toBe(true);
    expect(ids.has('a')).toBe(false);
    expect(ids.has('b')).toBe(true);
    expect(ids.has('c')).toBe(true);
  });
});

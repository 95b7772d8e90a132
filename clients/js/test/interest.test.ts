import { describe, expect, it } from 'vitest';
import { checkPattern, Interests, patternCovers, selectionCovers, topicMatches } from '../src/interest.js';

describe('event type patterns', () => {
  it('accepts what the gateway accepts and throws for the rest', () => {
    for (const ok of ['render.job.#', 'notification.*.v1', '#', '*', 'a-b_c.D9']) expect(checkPattern(ok)).toBe(ok);
    for (const bad of ['', 'a..b', '.a', 'a.', 'a b', 'a/b', 'ren*.job', 'a.#b', 'x'.repeat(256), 42]) {
      expect(() => checkPattern(bad), String(bad)).toThrow(TypeError);
    }
  });

  it('match like AMQP topic bindings: * one word, # zero or more', () => {
    expect(topicMatches('render.job.#', 'render.job.progress.v1')).toBe(true);
    expect(topicMatches('render.#', 'render')).toBe(true);
    expect(topicMatches('render.*', 'render')).toBe(false);
    expect(topicMatches('render.*.v1', 'render.job.v1')).toBe(true);
    expect(topicMatches('render.*.v1', 'render.job.progress.v1')).toBe(false);
    expect(topicMatches('#.v1', 'notification.created.v1')).toBe(true);
    expect(topicMatches('notification.#', 'render.job.queued.v1')).toBe(false);
  });

  it('know when one pattern selects everything another does', () => {
    expect(patternCovers('#', 'render.job.*')).toBe(true);
    expect(patternCovers('render.#', 'render.job.*')).toBe(true);
    expect(patternCovers('notification.#', 'notification.created.v1')).toBe(true);
    expect(patternCovers('render.*.*', 'render.#')).toBe(false);
    expect(patternCovers('a.*', 'a.#')).toBe(false);
    expect(patternCovers('a.b', 'a.*')).toBe(false);
    expect(selectionCovers(null, ['a.b'])).toBe(true);
    expect(selectionCovers(['a.#'], null)).toBe(false);
    expect(selectionCovers(['#'], null)).toBe(true);
    expect(selectionCovers(['a.#', 'b.c'], ['a.x.y', 'b.c'])).toBe(true);
    expect(selectionCovers(['a.#'], ['a.x', 'b.c'])).toBe(false);
  });
});

describe('Interests', () => {
  it('is everything while nothing is registered, or while something needs #', () => {
    const i = new Interests(32);
    expect(i.selection).toBeNull();
    const off = i.add(['render.job.#']);
    expect(i.selection).toEqual(['render.job.#']);
    const all = i.add(['#']);
    expect(i.selection).toBeNull();
    all();
    expect(i.selection).toEqual(['render.job.#']);
    off();
    expect(i.selection).toBeNull();
  });

  it('counts registrations, releases each once, and reduces the union', () => {
    const i = new Interests(32);
    const a = i.add(['notification.#']);
    const b = i.add(['notification.created.v1', 'render.job.#']);
    const c = i.add(['notification.#']);
    expect(i.selection).toEqual(['notification.#', 'render.job.#']);
    a();
    a(); // a second call must not release c's registration
    expect(i.selection).toEqual(['notification.#', 'render.job.#']);
    c();
    expect(i.selection).toEqual(['notification.created.v1', 'render.job.#']);
    b();
    expect(i.selection).toBeNull();
  });

  it('asks for everything rather than more patterns than the gateway takes', () => {
    const i = new Interests(2);
    i.add(['a', 'b']);
    expect(i.selection).toEqual(['a', 'b']);
    i.add(['c']);
    expect(i.selection).toBeNull();
  });
});

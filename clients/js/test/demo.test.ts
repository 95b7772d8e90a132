// The demo page's bookkeeping (clients/demo/bounded.js): its id lists stay bounded.
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain JavaScript module of the demo page, no types
import { remember } from '../../demo/bounded.js';

describe('review: the demo id lists are capped', () => {
  it('keeps the newest entries only', () => {
    const list: string[] = [];
    for (let i = 0; i < 10_000; i++) remember(list, `e${i}`, 500);
    expect(list).toHaveLength(500);
    expect(list[0]).toBe('e9500');
    expect(list.at(-1)).toBe('e9999');
  });

  it('unique lists add an item once', () => {
    const list: string[] = [];
    remember(list, 'j1', 3, true);
    remember(list, 'j1', 3, true);
    expect(list).toEqual(['j1']);
  });
});

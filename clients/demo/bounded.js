// A list that keeps only its newest entries: the demo records event and job ids for the
// end-to-end tests, and a page left open for days must not grow without bound.

/** Appends `item` (once, when `unique`) and drops the oldest entries beyond `max`. */
export function remember(list, item, max, unique = false) {
  if (unique && list.includes(item)) return list;
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
  return list;
}

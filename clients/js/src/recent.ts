/** Bounded set of recently seen event ids: the oldest is forgotten when full. */
export class RecentIds {
  private readonly ring: (string | undefined)[];
  private readonly set = new Set<string>();
  private next = 0;

  constructor(capacity: number) {
    this.ring = new Array<string | undefined>(Math.max(1, Math.floor(capacity)));
  }

  has(id: string): boolean {
    return this.set.has(id);
  }

  /** Adds `id`; returns false if it was already there. */
  add(id: string): boolean {
    if (this.set.has(id)) return false;
    const evicted = this.ring[this.next];
    if (evicted !== undefined) this.set.delete(evicted);
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.ring.length;
    this.set.add(id);
    return true;
  }
}

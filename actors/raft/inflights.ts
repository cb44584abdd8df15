import { assert } from '../../runtime/errors.js';

/**
 * The appends a leader has sent to one follower and not yet seen acknowledged: a ring of
 * (last index, bytes) in send order. Full (by count or by bytes) pauses replication to that
 * follower, which bounds both the memory and the network a slow follower can take.
 */
export class Inflights {
  /** Last index of each message in flight, in the order sent (strictly increasing). */
  private readonly indexes: Float64Array;
  private readonly sizes: Float64Array;
  /** Ring position of the oldest message in flight. */
  private start = 0;
  /** Messages in flight; ≤ capacity. */
  private countNow = 0;
  /** Sum of the sizes in flight. */
  private bytesNow = 0;

  constructor(
    readonly capacity: number,
    readonly bytesMax: number,
  ) {
    assert(Number.isSafeInteger(capacity) && capacity >= 1, 'inflights hold at least one message');
    this.indexes = new Float64Array(capacity);
    this.sizes = new Float64Array(capacity);
  }

  get count(): number {
    return this.countNow;
  }

  get bytes(): number {
    return this.bytesNow;
  }

  /** Records a message whose last entry is `index`. The caller checks full() first. */
  add(index: number, bytes: number): void {
    assert(!this.full(), 'no message is added to full inflights');
    if (this.countNow > 0) {
      const last = this.indexes[(this.start + this.countNow - 1) % this.capacity]!;
      assert(index > last, `inflight indexes increase (${index} after ${last})`);
    }
    const at = (this.start + this.countNow) % this.capacity;
    this.indexes[at] = index;
    this.sizes[at] = bytes;
    this.countNow++;
    this.bytesNow += bytes;
  }

  /** Forgets every message whose last index is ≤ index: the follower has acknowledged them. */
  freeLE(index: number): void {
    while (this.countNow > 0 && this.indexes[this.start]! <= index) this.freeFirst();
  }

  /** Forgets the oldest message; a heartbeat response proves the follower is alive, and freeing
   * one slot lets a probe through if the acks for a full window were lost. */
  freeFirstOne(): void {
    if (this.countNow > 0) this.freeFirst();
  }

  private freeFirst(): void {
    this.bytesNow -= this.sizes[this.start]!;
    this.start = (this.start + 1) % this.capacity;
    this.countNow--;
    if (this.countNow === 0) {
      this.start = 0;
      this.bytesNow = 0;
    }
    assert(this.bytesNow >= 0, 'inflight bytes never go negative');
  }

  full(): boolean {
    return this.countNow === this.capacity || this.bytesNow >= this.bytesMax;
  }

  reset(): void {
    this.start = 0;
    this.countNow = 0;
    this.bytesNow = 0;
  }
}

import type { Random } from '../random.js';
import type { Message, NodeId } from '../types.js';

interface InFlight {
  readonly m: Message;
  /** Not deliverable before this step (a delayed message). */
  readonly readyAt: number;
}

/** How badly the network behaves right now; the fault schedule changes it during a run. */
export interface NetworkQuality {
  /** Probability a sent message is lost. */
  dropRate: number;
  /** Probability a sent message is delivered twice. */
  dupRate: number;
  /** Probability a sent message is held back for a few steps. */
  delayRate: number;
  /** Probability a delivery takes a random message rather than the oldest. */
  reorderRate: number;
}

export const PerfectNetwork: NetworkQuality = { dropRate: 0, dupRate: 0, delayRate: 0, reorderRate: 0 };

/**
 * A simulated network between the nodes of one group: it can drop, duplicate, delay and reorder
 * messages, and cut links in one or both directions. Bounded: when full, the oldest message is
 * lost (as a real network would lose it under overload).
 */
export class SimNetwork {
  private queue: InFlight[] = [];
  /** Cut directed links, `from * 1024 + to`. */
  private readonly cuts = new Set<number>();
  quality: NetworkQuality = { ...PerfectNetwork };
  dropped = 0;

  constructor(
    private readonly rng: Random,
    private readonly queueMax: number,
  ) {}

  get size(): number {
    return this.queue.length;
  }

  send(m: Message, now: number): void {
    const q = this.quality;
    if (q.dropRate > 0 && this.rng.float() < q.dropRate) {
      this.dropped++;
      return;
    }
    const copies = q.dupRate > 0 && this.rng.float() < q.dupRate ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const delay = q.delayRate > 0 && this.rng.float() < q.delayRate ? 1 + this.rng.int(50) : 0;
      if (this.queue.length >= this.queueMax) {
        this.queue.shift();
        this.dropped++;
      }
      this.queue.push({ m, readyAt: now + delay });
    }
  }

  /** Takes the next message to deliver (the oldest deliverable, or a random one); undefined if
   * none is deliverable. A message across a cut link is consumed and lost. */
  take(now: number): { m: Message; lost: boolean } | undefined {
    if (this.queue.length === 0) return undefined;
    let at = -1;
    if (this.quality.reorderRate > 0 && this.rng.float() < this.quality.reorderRate) {
      const k = this.rng.int(this.queue.length);
      if (this.queue[k]!.readyAt <= now) at = k;
    }
    if (at < 0) {
      for (let i = 0; i < this.queue.length; i++) {
        if (this.queue[i]!.readyAt <= now) {
          at = i;
          break;
        }
      }
    }
    if (at < 0) return undefined;
    const { m } = this.queue[at]!;
    this.queue.splice(at, 1);
    const lost = this.cuts.has(m.from * 1024 + m.to);
    if (lost) this.dropped++;
    return { m, lost };
  }

  /** Makes every held-back message deliverable now (healing). */
  releaseDelays(): void {
    this.queue = this.queue.map((f) => ({ m: f.m, readyAt: 0 }));
  }

  cut(from: NodeId, to: NodeId): void {
    this.cuts.add(from * 1024 + to);
  }

  isCut(from: NodeId, to: NodeId): boolean {
    return this.cuts.has(from * 1024 + to);
  }

  heal(): void {
    this.cuts.clear();
  }

  get cutCount(): number {
    return this.cuts.size;
  }
}

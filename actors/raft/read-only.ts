import { assert } from '../../runtime/errors.js';
import type { NodeId } from './types.js';

/** A ReadIndex request a leader is confirming its leadership for. */
export interface ReadRequest {
  /** The caller's context, returned with the read state. */
  readonly context: string;
  /** Who asked: the leader itself, or a follower to answer with read_index_resp. */
  readonly from: NodeId;
  /** The leader's commit index when the request arrived: the read point. */
  readonly index: number;
  /** Voters that acknowledged a heartbeat sent after the request (the leader included). */
  readonly acks: Set<NodeId>;
}

/**
 * ReadIndex (Raft thesis §6.4): a leader records its commit index for a read, then proves it was
 * still the leader after the read arrived by collecting heartbeat acknowledgements from a
 * quorum. Requests are confirmed in order: an ack for a later request confirms every earlier one
 * too, because its heartbeat was sent after all of them arrived.
 *
 * Keys are `from:context`, so contexts chosen independently on different nodes never collide.
 */
export class ReadOnly {
  private readonly byKey = new Map<string, ReadRequest>();
  /** Keys in arrival order. */
  private queue: string[] = [];

  get size(): number {
    return this.queue.length;
  }

  static key(from: NodeId, context: string): string {
    return `${from}:${context}`;
  }

  /** Records a request; returns its key, or undefined if the same request is already pending. */
  add(index: number, context: string, from: NodeId, self: NodeId): string | undefined {
    const key = ReadOnly.key(from, context);
    if (this.byKey.has(key)) return undefined;
    this.byKey.set(key, { context, from, index, acks: new Set([self]) });
    this.queue.push(key);
    return key;
  }

  /** Records that `from` acknowledged the heartbeat for `key`; returns the acks so far. */
  recvAck(from: NodeId, key: string): ReadonlySet<NodeId> | undefined {
    const rs = this.byKey.get(key);
    if (!rs) return undefined;
    rs.acks.add(from);
    return rs.acks;
  }

  /** Removes and returns every request up to and including `key`, in order. */
  advance(key: string): ReadRequest[] {
    const at = this.queue.indexOf(key);
    if (at < 0) return [];
    const keys = this.queue.slice(0, at + 1);
    this.queue = this.queue.slice(at + 1);
    const out: ReadRequest[] = [];
    for (const k of keys) {
      const rs = this.byKey.get(k);
      assert(rs !== undefined, 'queued read requests are indexed');
      this.byKey.delete(k);
      out.push(rs);
    }
    return out;
  }

  /** The newest pending key: a heartbeat for it confirms all pending requests. */
  lastKey(): string | undefined {
    return this.queue.at(-1);
  }

  reset(): void {
    this.byKey.clear();
    this.queue = [];
  }
}

import type { Entry, NodeId } from '../types.js';
import type { Invariants } from './invariants.js';
import { commandOf, type SimStateMachine } from './state-machine.js';

/** Where one attempt to commit a command was accepted. */
interface Attempt {
  readonly id: number;
  readonly node: NodeId;
  readonly incarnation: number;
  readonly index: number;
  readonly term: number;
  /** The step it was made at; attempts time out (the client stops waiting and retries). */
  readonly at: number;
}

interface PendingRead {
  readonly node: NodeId;
  readonly incarnation: number;
  /** The highest acknowledged write index when the read was issued. */
  readonly minIndex: number;
  readonly at: number;
}

/**
 * The clients of the simulated group. Each command has a unique id; a command is acknowledged
 * when the node that accepted it applies it at the index it was given (what a server does before
 * answering). An attempt that is overtaken (another entry lands at its index), whose node
 * crashes, or that times out is retried, possibly committing the command twice: commands are
 * idempotent by id, as the product's are by idempotency key.
 */
export class SimClient {
  private nextId = 1;
  private nextRead = 1;
  /** Commands not yet acknowledged and with no attempt in flight. */
  readonly retry: number[] = [];
  /** Attempts in flight by node, then by index. */
  private readonly attempts = new Map<NodeId, Map<number, Attempt>>();
  /** Every command not yet acknowledged (in flight or waiting to be retried). */
  readonly unacked = new Set<number>();
  private readonly reads = new Map<string, PendingRead>();
  issued = 0;
  ackedCount = 0;
  readsServed = 0;

  constructor(private readonly inv: Invariants) {}

  newCommand(): number {
    const id = this.nextId++;
    this.unacked.add(id);
    this.issued++;
    return id;
  }

  takeRetry(): number | undefined {
    for (;;) {
      const id = this.retry.shift();
      if (id === undefined || this.unacked.has(id)) return id;
    }
  }

  /** Commands to send for an attempt that could not be made (refused): back to the queue. */
  refused(ids: readonly number[]): void {
    for (const id of ids) this.retry.push(id);
  }

  accepted(ids: readonly number[], node: NodeId, incarnation: number, index: number, term: number, at: number): void {
    let byIndex = this.attempts.get(node);
    if (!byIndex) this.attempts.set(node, (byIndex = new Map()));
    for (let k = 0; k < ids.length; k++) {
      const prev = byIndex.get(index + k);
      // An older attempt at the same index of this node has been overtaken by this one.
      if (prev) this.lost(prev);
      byIndex.set(index + k, { id: ids[k]!, node, incarnation, index: index + k, term, at });
    }
  }

  private lost(a: Attempt): void {
    if (this.unacked.has(a.id)) this.retry.push(a.id);
  }

  /** Node applied entry e (in its life `incarnation`). */
  onApply(node: NodeId, incarnation: number, e: Entry): void {
    const byIndex = this.attempts.get(node);
    const a = byIndex?.get(e.index);
    if (!a || !byIndex) return;
    byIndex.delete(e.index);
    if (a.incarnation !== incarnation) return this.lost(a);
    if (commandOf(e) === a.id && e.term === a.term) this.ack(a.id, e.index);
    else this.lost(a);
  }

  /** Node installed a snapshot: attempts it covers are decided by what the snapshot holds. */
  onSnapshot(node: NodeId, incarnation: number, sm: SimStateMachine): void {
    const byIndex = this.attempts.get(node);
    if (!byIndex) return;
    for (const [index, a] of [...byIndex]) {
      if (index > sm.applied) continue;
      byIndex.delete(index);
      if (a.incarnation === incarnation && sm.commandAt(index) === a.id) this.ack(a.id, index);
      else this.lost(a);
    }
  }

  private ack(id: number, index: number): void {
    if (!this.unacked.delete(id)) return;
    this.ackedCount++;
    this.inv.onAck(id, index);
  }

  /** The node crashed: its attempts and reads will never be answered. */
  onCrash(node: NodeId): void {
    const byIndex = this.attempts.get(node);
    if (byIndex) for (const a of byIndex.values()) this.lost(a);
    this.attempts.delete(node);
    for (const [ctx, r] of [...this.reads]) if (r.node === node) this.reads.delete(ctx);
  }

  /** The client gives up waiting on attempts and reads older than `before`. */
  expire(before: number): void {
    for (const byIndex of this.attempts.values()) {
      for (const [index, a] of [...byIndex]) {
        if (a.at < before) {
          byIndex.delete(index);
          this.lost(a);
        }
      }
    }
    for (const [ctx, r] of [...this.reads]) if (r.at < before) this.reads.delete(ctx);
  }

  /** Starts a read; returns its context. */
  newRead(): string {
    return `r${this.nextRead++}`;
  }

  readIssued(ctx: string, node: NodeId, incarnation: number, at: number): void {
    this.reads.set(ctx, { node, incarnation, minIndex: this.inv.maxAckedIndex, at });
  }

  onReadState(node: NodeId, incarnation: number, ctx: string, index: number): void {
    const r = this.reads.get(ctx);
    if (!r || r.node !== node || r.incarnation !== incarnation) return;
    this.reads.delete(ctx);
    this.readsServed++;
    this.inv.onRead(node, ctx, index, r.minIndex);
  }

  get inflightAttempts(): number {
    let n = 0;
    for (const m of this.attempts.values()) n += m.size;
    return n;
  }
}

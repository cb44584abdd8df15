import { assert } from '../../runtime/errors.js';
import { Inflights } from './inflights.js';
import type { Snapshot } from './types.js';

export const ProgressState = {
  /** The leader does not know where the follower's log matches: one append per heartbeat. */
  Probe: 'probe',
  /** The logs match up to `match`: appends stream optimistically, bounded by the inflights. */
  Replicate: 'replicate',
  /** The follower needs entries the leader has compacted: a snapshot is being sent in chunks. */
  Snapshot: 'snapshot',
} as const;
export type ProgressState = (typeof ProgressState)[keyof typeof ProgressState];

/** The snapshot being streamed to one follower; pinned, so compaction cannot change it under us. */
export interface SnapshotTransfer {
  readonly snapshot: Snapshot;
  /** Bytes sent so far; acked ≤ sent ≤ snapshot.data.byteLength. */
  sentBytes: number;
  /** Bytes the follower has confirmed holding contiguously from 0. */
  ackedBytes: number;
  /** The last chunk has been sent (a zero-byte snapshot is one empty chunk). */
  allSent: boolean;
  /** An ack arrived since the last heartbeat response; if not, the leader resends from ackedBytes. */
  progressed: boolean;
}

/** A leader's view of one member of the group (itself included). */
export class Progress {
  /** Highest index known to match the leader's log; match < next. */
  match = 0;
  /** Next index to send; match + 1 ≤ next ≤ leader's last index + 1. */
  next: number;
  state: ProgressState = ProgressState.Probe;
  /** Probe only: an append went out since the last heartbeat response; wait before another. */
  probeSent = false;
  readonly inflights: Inflights;
  /** Heard from within the current election timeout (check-quorum); the leader is always active. */
  recentActive = false;
  isLearner: boolean;
  /** Snapshot state only: the transfer in progress. */
  transfer: SnapshotTransfer | undefined = undefined;

  constructor(next: number, inflightMsgsMax: number, inflightBytesMax: number, isLearner: boolean) {
    assert(next >= 1, 'next index is ≥ 1');
    this.next = next;
    this.inflights = new Inflights(inflightMsgsMax, inflightBytesMax);
    this.isLearner = isLearner;
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.transfer = undefined;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    // After a snapshot, the follower holds at least the snapshot's index.
    const floor = this.state === ProgressState.Snapshot && this.transfer ? this.transfer.snapshot.meta.index : 0;
    this.resetState(ProgressState.Probe);
    this.next = Math.max(this.match + 1, floor + 1);
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshot: Snapshot): void {
    this.resetState(ProgressState.Snapshot);
    this.transfer = { snapshot, sentBytes: 0, ackedBytes: 0, allSent: false, progressed: false };
  }

  /** The follower acknowledged `n`; returns whether match moved. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /** Replicate only: entries up to n were sent, so the next append starts after them. */
  optimisticUpdate(n: number): void {
    assert(n >= this.next - 1, 'optimistic next never moves back');
    this.next = n + 1;
  }

  /**
   * The follower rejected an append probing at `rejected`, hinting that the logs may match at
   * `matchHint`. Returns false when the rejection is stale (an answer to an older probe).
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      // Everything ≤ match is known to match; a rejection there is a reordered old answer.
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    // Probe (and snapshot): only the answer to the probe in flight counts.
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  /** Whether appends to this follower must wait. */
  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full();
      case ProgressState.Snapshot:
        return true;
    }
  }

  toString(): string {
    return `${this.state} match=${this.match} next=${this.next}${this.isLearner ? ' learner' : ''}${this.probeSent ? ' paused' : ''} inflight=${this.inflights.count}`;
  }
}

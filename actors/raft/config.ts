import type { Random } from './random.js';
import type { Storage } from './storage.js';
import type { NodeId } from './types.js';

/** A configuration the core refuses to run with; raised at construction, never later. */
export class RaftConfigError extends Error {
  readonly code = 'invalid_raft_config';
  constructor(message: string) {
    super(`raft config: ${message}`);
    this.name = 'RaftConfigError';
  }
}

/**
 * Every limit of the core is a field here, validated once at construction (validateConfig).
 * Times are in ticks: the caller decides how long a tick is.
 */
export interface RaftConfig {
  /** This node; positive. */
  id: NodeId;
  /** What the core reads its log, hard state and snapshot through. */
  storage: Storage;
  /** Drives the randomized election timeout; the core uses no other randomness. */
  random: Random;
  /** A follower campaigns after a random timeout in [electionTicks, 2 × electionTicks). */
  electionTicks: number;
  /** A leader sends heartbeats this often; < electionTicks. */
  heartbeatTicks: number;
  /** Ask "would you vote for me" before bumping the term, so a node that was cut off cannot
   * force a healthy leader to step down when it returns. */
  preVote: boolean;
  /** A leader that has not heard from a quorum within an election timeout steps down, and
   * followers that have a live leader ignore votes (the leader lease). */
  checkQuorum: boolean;
  /** Upper bound on the entry bytes of one append message, and the size of a snapshot chunk.
   * A single entry larger than this still travels, alone. */
  msgBytesMax: number;
  /** Appends (or snapshot chunks) in flight to one follower before the leader waits for acks. */
  inflightMsgsMax: number;
  /** Entry bytes in flight to one follower; ≥ msgBytesMax. */
  inflightBytesMax: number;
  /** The proposal bound: entry bytes the leader holds uncommitted before refusing proposals
   * with `overloaded`. A leader with nothing uncommitted takes one proposal of any size. */
  uncommittedBytesMax: number;
  /** Committed entry bytes handed out per Ready (at least one entry). */
  committedBytesPerReadyMax: number;
  /** ReadIndex requests waiting at a leader (for a quorum, or for its first commit). */
  readIndexPendingMax: number;
  /** Messages buffered for the next Ready before new ones are dropped (Raft tolerates loss;
   * memory must stay bounded if the caller stops draining). */
  outboxMsgsMax: number;
  /** The index the caller's state machine has already applied on restart; defaults to the
   * snapshot index. Must lie in [snapshot index, commit]. */
  applied?: number;
}

export type RaftConfigInput = Omit<RaftConfig, keyof typeof RaftDefaults> & Partial<Pick<RaftConfig, keyof typeof RaftDefaults>>;

/** Values that fit a group of fastpaca: 100 ms ticks, 1 s minimum election timeout. */
export const RaftDefaults = {
  electionTicks: 10,
  heartbeatTicks: 1,
  preVote: true,
  checkQuorum: true,
  msgBytesMax: 1 << 20,
  inflightMsgsMax: 256,
  inflightBytesMax: 32 << 20,
  uncommittedBytesMax: 64 << 20,
  committedBytesPerReadyMax: 16 << 20,
  readIndexPendingMax: 4096,
  outboxMsgsMax: 65_536,
} as const;

function whole(name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new RaftConfigError(`${name} must be a whole number ≥ ${min}, got ${v}`);
}

/** Fills defaults and rejects unsafe or nonsensical combinations. */
export function validateConfig(input: RaftConfigInput): RaftConfig {
  const c: RaftConfig = { ...RaftDefaults, ...input };
  whole('id', c.id, 1);
  whole('heartbeatTicks', c.heartbeatTicks, 1);
  whole('electionTicks', c.electionTicks, 2);
  if (c.electionTicks <= c.heartbeatTicks) {
    throw new RaftConfigError(`electionTicks (${c.electionTicks}) must exceed heartbeatTicks (${c.heartbeatTicks}), or followers time out between heartbeats`);
  }
  if (c.checkQuorum && c.electionTicks < 2 * c.heartbeatTicks) {
    // A leader must get at least two heartbeat rounds per election timeout, or one lost
    // round of heartbeat responses makes it step down from a healthy quorum.
    throw new RaftConfigError(`checkQuorum requires electionTicks (${c.electionTicks}) ≥ 2 × heartbeatTicks (${c.heartbeatTicks})`);
  }
  whole('msgBytesMax', c.msgBytesMax, 1);
  whole('inflightMsgsMax', c.inflightMsgsMax, 1);
  whole('inflightBytesMax', c.inflightBytesMax, 1);
  if (c.inflightBytesMax < c.msgBytesMax) {
    throw new RaftConfigError(`inflightBytesMax (${c.inflightBytesMax}) must be ≥ msgBytesMax (${c.msgBytesMax}), or a full message can never be sent`);
  }
  whole('uncommittedBytesMax', c.uncommittedBytesMax, 1);
  whole('committedBytesPerReadyMax', c.committedBytesPerReadyMax, 1);
  whole('readIndexPendingMax', c.readIndexPendingMax, 1);
  whole('outboxMsgsMax', c.outboxMsgsMax, 16);
  if (c.applied !== undefined) whole('applied', c.applied, 0);
  if (typeof c.storage !== 'object' || c.storage === null) throw new RaftConfigError('storage is required');
  if (typeof c.random !== 'object' || c.random === null) throw new RaftConfigError('random is required');
  return c;
}

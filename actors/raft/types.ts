/**
 * The values the Raft core exchanges with its caller and its peers. Everything here is a plain
 * object (no classes), so it can be msgpack-encoded on the wire and compared in tests.
 *
 * Entries, messages and snapshots are immutable once created: the core shares them between its
 * log, the Ready it hands out and the messages it sends, and never copies them.
 */

/** A node of a group. Positive whole numbers; 0 is never a node (`None`). */
export type NodeId = number;

/** "No node": no vote cast, no leader known. */
export const None = 0;

export const EntryType = {
  /** An opaque command for the state machine (or, with empty data, a new leader's no-op). */
  Normal: 0,
  /** A membership change (see conf-change.ts), applied through RawNode.applyConfChange. */
  ConfChange: 1,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface Entry {
  /** ≥ 1 for every entry a leader creates; terms never decrease along a log. */
  readonly term: number;
  /** ≥ 1; consecutive along a log. */
  readonly index: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** What must be on disk before any message that depends on it leaves the node. */
export interface HardState {
  /** Never decreases on a node, across restarts too. */
  readonly term: number;
  /** The node voted for in `term`, or None; never changes within a term once set. */
  readonly vote: NodeId;
  /** Highest index known committed; never decreases; ≤ the last index of the persisted log. */
  readonly commit: number;
}

/** Group membership: voters count towards quorums; learners only receive the log. */
export interface ConfState {
  /** Sorted ascending, no duplicates, disjoint from learners. */
  readonly voters: readonly NodeId[];
  /** Sorted ascending, no duplicates. */
  readonly learners: readonly NodeId[];
}

export interface SnapshotMeta {
  /** The last index the snapshot covers; everything up to it is committed. */
  readonly index: number;
  /** The term of the entry at `index`. */
  readonly term: number;
  /** Membership as of `index`. */
  readonly conf: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  /** The state machine as of meta.index; opaque to the core. */
  readonly data: Uint8Array;
}

/** A linearizable read point: serve the read once the state machine has applied `index`. */
export interface ReadState {
  readonly index: number;
  readonly context: string;
}

export const StateRole = {
  Follower: 'follower',
  PreCandidate: 'pre_candidate',
  Candidate: 'candidate',
  Leader: 'leader',
} as const;
export type StateRole = (typeof StateRole)[keyof typeof StateRole];

/** Volatile state the caller may want to observe (leader changes); never persisted. */
export interface SoftState {
  readonly lead: NodeId;
  readonly role: StateRole;
}

export const MessageKind = {
  /** Leader → follower: entries after (index, logTerm), and the leader's commit. */
  App: 'app',
  /** Follower → leader: accepted up to `index`, or rejected with a hint where the logs may match. */
  AppResp: 'app_resp',
  Vote: 'vote',
  VoteResp: 'vote_resp',
  /** A vote for term+1 that changes nobody's term: "would you vote for me?" */
  PreVote: 'pre_vote',
  PreVoteResp: 'pre_vote_resp',
  Heartbeat: 'heartbeat',
  HeartbeatResp: 'heartbeat_resp',
  /** Leader → follower: one chunk of a snapshot. */
  Snap: 'snap',
  /** Follower → leader: the bytes of the snapshot received so far. */
  SnapResp: 'snap_resp',
  /** Follower → leader: asks for a read index on behalf of a local reader. */
  ReadIndex: 'read_index',
  ReadIndexResp: 'read_index_resp',
  /** Leader → transferee: campaign now, without waiting for the election timeout. */
  TimeoutNow: 'timeout_now',
} as const;
export type MessageKind = (typeof MessageKind)[keyof typeof MessageKind];

interface Envelope {
  readonly from: NodeId;
  readonly to: NodeId;
  /** The sender's term (for pre-votes: the term it would campaign in); ≥ 1. */
  readonly term: number;
}

export interface AppMessage extends Envelope {
  readonly kind: typeof MessageKind.App;
  /** The index just before `entries`. */
  readonly index: number;
  /** The term of the entry at `index` in the leader's log. */
  readonly logTerm: number;
  readonly entries: readonly Entry[];
  /** The leader's commit index, capped at what the follower is known to hold. */
  readonly commit: number;
}

export interface AppRespMessage extends Envelope {
  readonly kind: typeof MessageKind.AppResp;
  /** Accepted: the follower's log matches the leader's up to here. Rejected: the probed index. */
  readonly index: number;
  readonly reject: boolean;
  /** Rejected only: the largest index at which the logs may match. */
  readonly rejectHint: number;
  /** Rejected only: the follower's term at rejectHint (0 when unknown). */
  readonly logTerm: number;
}

export interface VoteMessage extends Envelope {
  readonly kind: typeof MessageKind.Vote | typeof MessageKind.PreVote;
  /** The candidate's last index and its term: voters grant only to logs at least as up to date. */
  readonly index: number;
  readonly logTerm: number;
  /** Sent on behalf of a leadership transfer: voters disregard their leader lease. */
  readonly transfer: boolean;
}

export interface VoteRespMessage extends Envelope {
  readonly kind: typeof MessageKind.VoteResp | typeof MessageKind.PreVoteResp;
  readonly reject: boolean;
}

export interface HeartbeatMessage extends Envelope {
  readonly kind: typeof MessageKind.Heartbeat;
  /** min(leader commit, follower match): never beyond what the follower holds. */
  readonly commit: number;
  /** The newest pending ReadIndex context, echoed back to confirm leadership for it. */
  readonly context: string | undefined;
}

export interface HeartbeatRespMessage extends Envelope {
  readonly kind: typeof MessageKind.HeartbeatResp;
  readonly context: string | undefined;
}

export interface SnapMessage extends Envelope {
  readonly kind: typeof MessageKind.Snap;
  readonly meta: SnapshotMeta;
  /** Byte offset of `data` in the whole snapshot. */
  readonly offset: number;
  /** Size of the whole snapshot data in bytes. */
  readonly totalBytes: number;
  /** This chunk: offset + data.byteLength ≤ totalBytes; the last chunk ends at totalBytes. */
  readonly data: Uint8Array;
}

export interface SnapRespMessage extends Envelope {
  readonly kind: typeof MessageKind.SnapResp;
  /** The snapshot the follower is assembling (meta.index of the chunks it acknowledges). */
  readonly snapIndex: number;
  /** Bytes the follower holds contiguously from 0: the offset it expects next. */
  readonly offset: number;
  /** The chunk did not fit at the follower's offset: the leader resends from `offset`. */
  readonly reject: boolean;
}

export interface ReadIndexMessage extends Envelope {
  readonly kind: typeof MessageKind.ReadIndex;
  readonly context: string;
}

export interface ReadIndexRespMessage extends Envelope {
  readonly kind: typeof MessageKind.ReadIndexResp;
  readonly context: string;
  readonly index: number;
}

export interface TimeoutNowMessage extends Envelope {
  readonly kind: typeof MessageKind.TimeoutNow;
}

export type Message =
  | AppMessage
  | AppRespMessage
  | VoteMessage
  | VoteRespMessage
  | HeartbeatMessage
  | HeartbeatRespMessage
  | SnapMessage
  | SnapRespMessage
  | ReadIndexMessage
  | ReadIndexRespMessage
  | TimeoutNowMessage;

/** Bytes an entry is charged for in flow control and the proposal bound: data plus a fixed
 * allowance for index, term and framing, so even empty entries cost something. */
export const EntryOverheadBytes = 16;

export function entryBytes(e: Entry): number {
  return e.data.byteLength + EntryOverheadBytes;
}

export function entriesBytes(ents: readonly Entry[]): number {
  let n = 0;
  for (const e of ents) n += e.data.byteLength + EntryOverheadBytes;
  return n;
}

export const EmptyData: Uint8Array = new Uint8Array(0);

export const EmptyConfState: ConfState = { voters: [], learners: [] };

export function isHardStateEqual(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

/**
 * What nodes say to each other over the transport, and the checks every message from a peer
 * passes before anything acts on it. A peer is trusted to be a fastpaca node of the same cluster
 * (the handshake), not to be bug-free or unmodified: a message that does not have the exact shape
 * is dropped and counted, and never reaches the Raft core (whose assertions would stop the node).
 */
import { MessageKind, type Entry, type Message } from '../raft/types.js';
import type { QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult } from './types.js';

/** A Raft message of one group. */
export interface RaftEnvelope {
  t: 'r';
  g: number;
  m: Message;
}

/** Heartbeat [group, term, commit, context] and its answer [group, term, context]. */
export type HeartbeatTuple = [number, number, number, string | null];
export type HeartbeatRespTuple = [number, number, string | null];

/** The heartbeats of every group between two nodes in one event-loop turn: one message, not one per group. */
export interface Heartbeats {
  t: 'h';
  h?: HeartbeatTuple[];
  r?: HeartbeatRespTuple[];
}

/**
 * The Raft messages a Heartbeats stands for, from `from` to `self` (Raft ids). A tuple without
 * the exact shape is skipped (counted by the caller as the messages it did not get).
 */
export function expandHeartbeats(hb: Heartbeats, from: number, self: number): Array<{ group: number; message: Message }> {
  const out: Array<{ group: number; message: Message }> = [];
  const ctx = (c: unknown): c is string | null => c === null || typeof c === 'string';
  if (Array.isArray(hb.h)) {
    for (const t of hb.h as unknown[]) {
      if (!Array.isArray(t) || t.length !== 4 || !whole(t[0]) || !whole(t[1]) || !whole(t[2]) || !ctx(t[3])) continue;
      out.push({ group: t[0], message: { kind: MessageKind.Heartbeat, from, to: self, term: t[1], commit: t[2], context: t[3] ?? undefined } });
    }
  }
  if (Array.isArray(hb.r)) {
    for (const t of hb.r as unknown[]) {
      if (!Array.isArray(t) || t.length !== 3 || !whole(t[0]) || !whole(t[1]) || !ctx(t[2])) continue;
      out.push({ group: t[0], message: { kind: MessageKind.HeartbeatResp, from, to: self, term: t[1], context: t[2] ?? undefined } });
    }
  }
  return out;
}

/** A request forwarded to the node that leads (or is thought to lead) its group. */
export type Forward =
  | { t: 'w'; id: number; g: number; ms: number; req: WriteRequest }
  | { t: 'q'; id: number; g: number; ms: number; req: ReadRequest }
  /** Membership change, leadership transfer, the leader's status of the group (the coordinator's). */
  | { t: 'c' | 't' | 'g'; id: number; g: number; ms: number; req: unknown }
  /** "Do you belong to a cluster?" (a node deciding whether to found or to join). */
  | { t: 'f'; id: number; ms: number }
  | { t: 'l'; id: number; ms: number; req: Extract<ReadRequest, { q: 'list' }> }
  | { t: 's'; id: number; ms: number }
  /** "Forget the copy of node `node` you know, unless it is one of `keep`": the last step of replacing a node that lost its data. */
  | { t: 'x'; id: number; ms: number; node: string; keep?: string[] }
  /** "Which copy of node `node` do you know?" (a node admitting a peer it never met asks the others). */
  | { t: 'i'; id: number; ms: number; node: string };

/** The answer to a Forward, correlated by id. */
export interface Answer {
  t: 'a';
  id: number;
  ok?: CommandResult | QueryResult | unknown;
  /** A failure: its code, sentence and Retry-After; `leader` when it was refused for not leading. */
  err?: { code: string; message: string; extra?: Record<string, unknown>; retryAfterS?: number; leader?: number };
}

export type PeerMessage = RaftEnvelope | Heartbeats | Forward | Answer;

const whole = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const ids = (v: unknown): boolean => Array.isArray(v) && v.length <= 64 && v.every((x) => whole(x) && x >= 1);

function validEntry(e: unknown): e is Entry {
  if (!isObject(e) || !whole(e.term) || e.term < 1 || !whole(e.index) || e.index < 1 || !isBytes(e.data)) return false;
  if (e.type === 0) return true;
  // A membership change: 9 bytes, an op code (1-3), a node id (conf-change.ts), so applying it cannot throw.
  if (e.type !== 1 || e.data.byteLength !== 9) return false;
  const view = new DataView(e.data.buffer, e.data.byteOffset, 9);
  const op = view.getUint8(0);
  const node = view.getFloat64(1);
  return op >= 1 && op <= 3 && Number.isSafeInteger(node) && node >= 1;
}

/** Strictly ascending positive ids: sorted, no duplicates. */
const ascending = (v: readonly number[]) => v.every((x, i) => i === 0 || x > v[i - 1]!);

function validConf(c: unknown): boolean {
  if (!isObject(c) || !ids(c.voters) || !ids(c.learners)) return false;
  const voters = c.voters as number[];
  const learners = c.learners as number[];
  return voters.length > 0 && ascending(voters) && ascending(learners) && !learners.some((l) => voters.includes(l));
}

/**
 * Whether `m` is a well-formed Raft message from `from` to `self` (Raft ids). Field by field, as
 * types.ts defines them: a peer's bug or a hostile frame cannot reach the core.
 */
export function validRaftMessage(m: unknown, from: number, self: number): m is Message {
  if (!isObject(m) || m.from !== from || m.to !== self || !whole(m.term)) return false;
  switch (m.kind) {
    case MessageKind.App: {
      if (!whole(m.index) || !whole(m.logTerm) || !whole(m.commit) || !Array.isArray(m.entries) || m.logTerm > m.term) return false;
      // Consecutive indexes; terms never fall along the log, from the one before them, and never pass the sender's.
      let prev = m.index;
      let term = m.logTerm;
      for (const e of m.entries as unknown[]) {
        if (!validEntry(e) || e.index !== prev + 1 || e.term < term || e.term > m.term) return false;
        prev = e.index;
        term = e.term;
      }
      return true;
    }
    case MessageKind.AppResp:
      return whole(m.index) && typeof m.reject === 'boolean' && whole(m.rejectHint) && whole(m.logTerm);
    case MessageKind.Vote:
    case MessageKind.PreVote:
      return whole(m.index) && whole(m.logTerm) && typeof m.transfer === 'boolean';
    case MessageKind.VoteResp:
    case MessageKind.PreVoteResp:
      return typeof m.reject === 'boolean';
    case MessageKind.Heartbeat:
      return whole(m.commit) && (m.context === undefined || m.context === null || typeof m.context === 'string');
    case MessageKind.HeartbeatResp:
      return m.context === undefined || m.context === null || typeof m.context === 'string';
    case MessageKind.Snap: {
      const meta = m.meta;
      if (!isObject(meta) || !whole(meta.index) || meta.index < 1 || !whole(meta.term) || meta.term < 1 || meta.term > m.term || !validConf(meta.conf)) return false;
      return whole(m.offset) && whole(m.totalBytes) && isBytes(m.data) && m.offset + m.data.byteLength <= m.totalBytes && m.totalBytes <= SnapshotBytesMax;
    }
    case MessageKind.SnapResp:
      return whole(m.snapIndex) && whole(m.offset) && typeof m.reject === 'boolean';
    case MessageKind.ReadIndex:
      return typeof m.context === 'string';
    case MessageKind.ReadIndexResp:
      return typeof m.context === 'string' && whole(m.index);
    case MessageKind.TimeoutNow:
      return true;
    default:
      return false;
  }
}

/** A snapshot larger than this is refused (a follower allocates its whole size up front). */
export const SnapshotBytesMax = 1 << 30;

/** Normalizes what msgpack turned `undefined` into (nil → null) back where the core expects undefined. */
export function normalizeRaftMessage(m: Message): Message {
  if ((m.kind === MessageKind.Heartbeat || m.kind === MessageKind.HeartbeatResp) && m.context === null) return { ...m, context: undefined };
  return m;
}

/** Whether `v` has the shape of a PeerMessage's envelope (its payload is checked where it is used). */
export function peerMessageKind(v: unknown): PeerMessage['t'] | undefined {
  if (!isObject(v)) return undefined;
  switch (v.t) {
    case 'r':
      return whole(v.g) && isObject(v.m) ? 'r' : undefined;
    case 'h':
      return (v.h === undefined || Array.isArray(v.h)) && (v.r === undefined || Array.isArray(v.r)) ? 'h' : undefined;
    case 'w':
    case 'q':
    case 'c':
    case 't':
    case 'g':
      return whole(v.id) && whole(v.g) && whole(v.ms) && isObject(v.req) ? v.t : undefined;
    case 'f':
      return whole(v.id) && whole(v.ms) ? 'f' : undefined;
    case 'l':
      return whole(v.id) && whole(v.ms) && isObject(v.req) ? 'l' : undefined;
    case 's':
      return whole(v.id) && whole(v.ms) ? 's' : undefined;
    case 'i':
      return whole(v.id) && whole(v.ms) && typeof v.node === 'string' && v.node.length <= 253 ? 'i' : undefined;
    case 'x':
      return whole(v.id) && whole(v.ms) && typeof v.node === 'string' && v.node.length <= 253 && (v.keep === undefined || (Array.isArray(v.keep) && v.keep.length <= 64 && v.keep.every((k) => typeof k === 'string' && k.length <= 64))) ? 'x' : undefined;
    case 'a':
      return whole(v.id) && (v.err === undefined || isObject(v.err)) ? 'a' : undefined;
    default:
      return undefined;
  }
}

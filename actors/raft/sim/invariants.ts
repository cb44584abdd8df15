import type { RawNode } from '../raw-node.js';
import { StateRole, type Entry, type HardState, type NodeId, type Snapshot } from '../types.js';
import { commandOf, type SimStateMachine } from './state-machine.js';

/** A violated safety property: the run stops at the first one. */
export class Violation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Violation';
  }
}

/** A stable digest of an entry's type and data (FNV-1a), to compare entries across nodes. */
export function fingerprint(e: Entry): number {
  let h = 0x811c9dc5 ^ e.type;
  const d = e.data;
  for (let i = 0; i < d.byteLength; i++) h = Math.imul(h ^ d[i]!, 0x01000193);
  return h >>> 0;
}

const TermBits = 2 ** 24;

interface NodeSeen {
  incarnation: number;
  term: number;
  commit: number;
  applied: number;
  /** Entries up to here have been checked against the committed record. */
  checkedCommit: number;
  /** The term in which we last saw this node lead (to check completeness once per term). */
  ledTerm: number;
}

/**
 * The safety properties of Raft, checked after every event of a simulation:
 *   - election safety: at most one leader per term;
 *   - log matching: entries with the same index and term have the same command and the same
 *     predecessor term (so, by induction, the same prefix);
 *   - committed entries never change: every node's committed prefix agrees with one record,
 *     across crashes and restarts;
 *   - leader completeness: a new leader holds every entry committed before its term;
 *   - state machine safety: every node applies the same command at each index (snapshots too);
 *   - monotonicity: term, commit and applied never go backwards within a node's life, and the
 *     durable term and commit never go backwards across crashes; a vote never changes in a term;
 *   - client guarantees: nothing acknowledged is lost, and reads are linearizable (a read
 *     issued after a write was acknowledged is served at or after the write's index).
 */
export class Invariants {
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** Committed entries by index: term and fingerprint. */
  private readonly committedTerm: number[] = [];
  private readonly committedFp: number[] = [];
  /** The highest index any node has reported committed. */
  maxCommitted = 0;
  /** (index, term) → [predecessor term, fingerprint], for log matching. */
  private readonly logIds = new Map<number, [number, number]>();
  /** The command applied at each index by anyone. */
  private readonly appliedCmd: number[] = [];
  private readonly seen = new Map<NodeId, NodeSeen>();
  private readonly durable = new Map<NodeId, HardState>();
  /** Acknowledged commands: id → index. */
  readonly acked = new Map<number, number>();
  /** The highest index of any acknowledged command. */
  maxAckedIndex = 0;

  fail(message: string): never {
    throw new Violation(message);
  }

  // ---- storage hooks ---------------------------------------------------------------------------

  onAppend(node: NodeId, entries: readonly Entry[], prevTerm: number): void {
    let prev = prevTerm;
    for (const e of entries) {
      if (e.term >= TermBits) this.fail(`term ${e.term} beyond what the checker can key`);
      if (e.term < prev) this.fail(`node ${node} appends entry ${e.index} of term ${e.term} after term ${prev}: terms decrease along its log`);
      const key = e.index * TermBits + e.term;
      const fp = fingerprint(e);
      const known = this.logIds.get(key);
      if (known === undefined) {
        this.logIds.set(key, [prev, fp]);
      } else if (known[0] !== prev || known[1] !== fp) {
        this.fail(`log matching: node ${node} writes entry (${e.index}, term ${e.term}) with predecessor term ${prev} / data ${fp}, another log has ${known[0]} / ${known[1]}`);
      }
      prev = e.term;
    }
  }

  onDurable(node: NodeId, hs: HardState): void {
    const before = this.durable.get(node);
    if (before) {
      if (hs.term < before.term) this.fail(`node ${node}'s durable term went back from ${before.term} to ${hs.term}`);
      if (hs.commit < before.commit) this.fail(`node ${node}'s durable commit went back from ${before.commit} to ${hs.commit}`);
      if (hs.term === before.term && before.vote !== 0 && hs.vote !== before.vote) this.fail(`node ${node} changed its vote in term ${hs.term} from ${before.vote} to ${hs.vote}`);
    }
    this.durable.set(node, hs);
  }

  // ---- after every event -----------------------------------------------------------------------

  /** Checks one live node; `incarnation` changes when it restarts. */
  checkNode(id: NodeId, incarnation: number, raw: RawNode): void {
    const r = raw.raft;
    const log = r.log;
    let s = this.seen.get(id);
    if (!s || s.incarnation !== incarnation) {
      // A new life: volatile state starts over from disk; re-check its committed prefix.
      s = { incarnation, term: r.term, commit: log.committed, applied: log.applied, checkedCommit: log.firstIndex() - 1, ledTerm: 0 };
      this.seen.set(id, s);
    }
    if (r.term < s.term) this.fail(`node ${id}'s term went back from ${s.term} to ${r.term}`);
    if (log.committed < s.commit) this.fail(`node ${id}'s commit went back from ${s.commit} to ${log.committed}`);
    if (log.applied < s.applied) this.fail(`node ${id}'s applied went back from ${s.applied} to ${log.applied}`);
    if (log.applied > log.committed) this.fail(`node ${id} applied ${log.applied} beyond commit ${log.committed}`);
    if (log.committed > log.lastIndex()) this.fail(`node ${id} committed ${log.committed} beyond its last index ${log.lastIndex()}`);
    s.term = r.term;
    s.commit = log.committed;
    s.applied = log.applied;

    if (log.committed > s.checkedCommit) {
      const lo = Math.max(s.checkedCommit + 1, log.firstIndex());
      if (lo <= log.committed) {
        const ents = log.slice(lo, log.committed + 1, Infinity);
        if (ents === undefined || ents.length !== log.committed + 1 - lo) this.fail(`node ${id} cannot read its committed entries [${lo}, ${log.committed}]`);
        for (const e of ents) this.recordCommitted(id, e);
      }
      s.checkedCommit = log.committed;
    }

    if (r.role === StateRole.Leader) {
      const other = this.leaderOfTerm.get(r.term);
      if (other !== undefined && other !== id) this.fail(`two leaders in term ${r.term}: ${other} and ${id}`);
      this.leaderOfTerm.set(r.term, id);
      if (s.ledTerm !== r.term) {
        s.ledTerm = r.term;
        this.checkCompleteness(id, raw);
      }
    }
  }

  private recordCommitted(id: NodeId, e: Entry): void {
    const fp = fingerprint(e);
    const t = this.committedTerm[e.index];
    if (t === undefined) {
      this.committedTerm[e.index] = e.term;
      this.committedFp[e.index] = fp;
      if (e.index > this.maxCommitted) this.maxCommitted = e.index;
    } else if (t !== e.term || this.committedFp[e.index] !== fp) {
      this.fail(`committed entry ${e.index} changed: node ${id} has term ${e.term} / data ${fp}, it was committed as term ${t} / data ${this.committedFp[e.index]}`);
    }
  }

  /** A leader of a new term must hold every entry committed so far (all from older terms). */
  private checkCompleteness(id: NodeId, raw: RawNode): void {
    const log = raw.raft.log;
    if (log.lastIndex() < this.maxCommitted) this.fail(`leader completeness: node ${id} leads term ${raw.raft.term} with last index ${log.lastIndex()} < committed ${this.maxCommitted}`);
    for (let i = log.firstIndex(); i <= this.maxCommitted; i++) {
      const want = this.committedTerm[i];
      if (want === undefined) continue;
      const t = log.term(i);
      if (t !== want) this.fail(`leader completeness: node ${id} leads term ${raw.raft.term} with term ${t} at ${i}, committed as term ${want}`);
    }
  }

  // ---- application hooks -----------------------------------------------------------------------

  onApply(node: NodeId, e: Entry): void {
    const cmd = commandOf(e);
    const known = this.appliedCmd[e.index];
    if (known === undefined) this.appliedCmd[e.index] = cmd;
    else if (known !== cmd) this.fail(`state machine safety: node ${node} applies command ${cmd} at ${e.index}, another node applied ${known}`);
    const t = this.committedTerm[e.index];
    if (t !== undefined && t !== e.term) this.fail(`node ${node} applies entry ${e.index} of term ${e.term}, committed as term ${t}`);
  }

  /** A node installed a snapshot: its state must agree with what was applied everywhere. */
  onSnapshot(node: NodeId, snap: Snapshot, sm: SimStateMachine): void {
    if (sm.applied !== snap.meta.index) this.fail(`node ${node}'s snapshot at ${snap.meta.index} holds ${sm.applied} commands`);
    const t = this.committedTerm[snap.meta.index];
    if (t !== undefined && t !== snap.meta.term) this.fail(`node ${node} installs a snapshot at ${snap.meta.index} of term ${snap.meta.term}, committed as term ${t}`);
    for (let i = 1; i <= snap.meta.index; i++) {
      const cmd = sm.commandAt(i)!;
      const known = this.appliedCmd[i];
      if (known === undefined) this.appliedCmd[i] = cmd;
      else if (known !== cmd) this.fail(`state machine safety: node ${node}'s snapshot has command ${cmd} at ${i}, applied elsewhere as ${known}`);
    }
  }

  onAck(cmd: number, index: number): void {
    if (this.acked.has(cmd)) return;
    this.acked.set(cmd, index);
    if (index > this.maxAckedIndex) this.maxAckedIndex = index;
    const applied = this.appliedCmd[index];
    if (applied !== cmd) this.fail(`command ${cmd} acknowledged at ${index}, where ${applied} was applied`);
  }

  /** A read issued when `minIndex` writes were acknowledged was served at `index`. */
  onRead(node: NodeId, context: string, index: number, minIndex: number): void {
    if (index < minIndex) this.fail(`stale read: node ${node} served read ${context} at ${index}, but a write at ${minIndex} was acknowledged before it was issued`);
  }

  /** At the end: every acknowledged command is in every listed state machine, at its index. */
  checkAcked(holders: Array<{ id: NodeId; sm: SimStateMachine }>): void {
    for (const [cmd, index] of this.acked) {
      for (const { id, sm } of holders) {
        if (sm.applied < index) this.fail(`liveness: node ${id} applied only ${sm.applied}, acknowledged command ${cmd} is at ${index}`);
        const at = sm.commandAt(index);
        if (at !== cmd) this.fail(`acknowledged command ${cmd} at ${index} lost: node ${id} has ${at} there`);
      }
    }
  }

  /** The command applied at index, if any node applied it. */
  appliedAt(index: number): number | undefined {
    return this.appliedCmd[index];
  }
}

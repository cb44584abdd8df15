/**
 * `fastpaca bench raft`: proposals per second through a 3-node group of Raft cores on one
 * thread, with in-memory storage and an in-memory network — everything but the disk and the
 * wire, so the figure is the core's own ceiling. The product's floor is 200,000 entries/s on one
 * core: the consensus core must never be what limits a node.
 */
import { assert } from '../../runtime/errors.js';
import { Xoshiro128 } from './random.js';
import { RawNode } from './raw-node.js';
import { MemoryStorage } from './storage.js';
import { EmptyData, StateRole, type Message, type NodeId } from './types.js';

export interface RaftBenchOptions {
  json: boolean;
  durationS?: number;
  /** Entries per proposal call. */
  batch?: number;
  /** Bytes of data per entry. */
  entryBytes?: number;
}

export interface RaftBenchResult {
  entries: number;
  seconds: number;
  entriesPerS: number;
  /** Ready/advance rounds of the whole group. */
  rounds: number;
  messages: number;
}

const FloorEntriesPerS = 200_000;

interface BenchNode {
  raw: RawNode;
  storage: MemoryStorage;
  applied: number;
}

/** Runs the group for durationS seconds and counts entries committed and applied on every node. */
export function runRaftBench(durationS: number, batch = 256, entryBytes = 64): RaftBenchResult {
  const ids: NodeId[] = [1, 2, 3];
  const nodes = new Map<NodeId, BenchNode>();
  for (const id of ids) {
    const storage = MemoryStorage.bootstrap({ voters: ids, learners: [] });
    const raw = new RawNode({ id, storage, random: new Xoshiro128(id), electionTicks: 10, heartbeatTicks: 1 });
    nodes.set(id, { raw, storage, applied: 0 });
  }
  let messages = 0;
  let inbox: Message[] = [];
  // One round: every node handles its Ready (persist, send, apply, advance), then every message
  // is delivered. A real node does the same per event-loop turn, with an fsync in between.
  const round = () => {
    for (const n of nodes.values()) {
      if (!n.raw.hasReady()) continue;
      const rd = n.raw.ready();
      if (rd.snapshot) n.storage.applySnapshot(rd.snapshot);
      n.storage.append(rd.entries);
      if (rd.hardState) n.storage.setHardState(rd.hardState);
      for (const m of rd.messages) inbox.push(m);
      n.applied += rd.committedEntries.length;
      n.raw.advance();
    }
    const batchMsgs = inbox;
    inbox = [];
    messages += batchMsgs.length;
    for (const m of batchMsgs) nodes.get(m.to)!.raw.step(m);
  };
  const leader = nodes.get(1)!;
  leader.raw.campaign();
  for (let i = 0; i < 100 && leader.raw.raft.role !== StateRole.Leader; i++) round();
  assert(leader.raw.raft.role === StateRole.Leader, 'node 1 wins the election');
  for (let i = 0; i < 10; i++) round();

  // Distinct payloads, allocated up front: the bench measures the core, not the allocator.
  const payloads: Uint8Array[] = Array.from({ length: batch * 4 }, (_, i) => {
    const d = new Uint8Array(entryBytes);
    d.fill(i & 0xff);
    return d;
  });
  const batches = Array.from({ length: 4 }, (_, k) => payloads.slice(k * batch, (k + 1) * batch));
  const startApplied = Math.min(...[...nodes.values()].map((n) => n.applied));
  let rounds = 0;
  const t0 = performance.now();
  const deadline = t0 + durationS * 1000;
  let ticks = 0;
  for (;;) {
    // Keep the pipeline full: propose until the proposal bound pushes back.
    for (let k = 0; k < 4; k++) {
      if (!leader.raw.proposeBatch(batches[k]!).ok) break;
    }
    round();
    rounds++;
    if ((rounds & 63) === 0) {
      // Heartbeats keep the followers from campaigning; ticks are cheap but not free.
      for (const n of nodes.values()) {
        n.raw.tick();
        // Snapshot and compact as a node would, so memory stays bounded however long the run.
        const applied = n.raw.raft.log.applied;
        if (applied - n.storage.firstIndex() > 100_000) {
          n.storage.createSnapshot(applied, n.storage.initialState().confState, EmptyData);
          n.storage.compact(applied - 1000);
        }
      }
      ticks++;
      if (performance.now() >= deadline) break;
    }
  }
  // Drain, so every entry counted is applied on all three nodes.
  for (let i = 0; i < 50; i++) round();
  const seconds = (performance.now() - t0) / 1000;
  assert(leader.raw.raft.role === StateRole.Leader, `the leader kept its leadership through the run (${ticks} ticks)`);
  const applied = Math.min(...[...nodes.values()].map((n) => n.applied)) - startApplied;
  return { entries: applied, seconds, entriesPerS: applied / seconds, rounds, messages };
}

/** Prints entries/s; with json, one JSON line last. Returns the exit code. */
export async function benchRaft(opts: RaftBenchOptions): Promise<number> {
  const durationS = opts.durationS ?? 5;
  const r = runRaftBench(durationS, opts.batch, opts.entryBytes);
  const perS = Math.round(r.entriesPerS);
  const ok = perS >= FloorEntriesPerS;
  process.stdout.write(
    `raft: ${perS.toLocaleString('en-US')} entries/s committed and applied on 3 nodes (one thread, in-memory storage and network; ${r.entries.toLocaleString('en-US')} entries in ${r.seconds.toFixed(1)} s, ${r.rounds} rounds, ${r.messages} messages); floor ${FloorEntriesPerS.toLocaleString('en-US')}: ${ok ? 'ok' : 'BELOW'}\n`,
  );
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ scenario: 'raft', ops_per_s: perS, errors: 0, entries: r.entries, duration_s: Number(r.seconds.toFixed(3)), nodes: 3, batch: opts.batch ?? 256, entry_bytes: opts.entryBytes ?? 64, floor_per_s: FloorEntriesPerS })}\n`);
  }
  return ok ? 0 : 1;
}

/**
 * GroupReplicas: context groups as Raft groups over one RaftWal, on one node (single voters).
 * The same commands applied directly to a MemoryView are the oracle.
 */
import fs from 'node:fs';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryView } from '../../actors/contexts/memory-view.js';
import { GroupReplicas, type ReplicasOptions } from '../../actors/contexts/replicas.js';
import { apply } from '../../actors/contexts/state-machine.js';
import type { Command } from '../../actors/contexts/types.js';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { RaftWal } from '../../actors/raft/wal-storage.js';
import { groupOf } from '../../runtime/hash.js';
import { createLogger } from '../../runtime/log.js';
import { sized } from '../support/machine.js';
import { tempDir } from '../support/server.js';

const machine = { defaultTokenizer: 'approx' as const };
const quiet = createLogger('error', {}, () => {});
const Groups = 16;

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function replicas(wal: RaftWal, view: MemoryView, applied: Map<number, number>, over: Partial<ReplicasOptions> = {}): GroupReplicas {
  return new GroupReplicas({
    raftId: 1,
    groups: Array.from({ length: Groups }, (_, g) => g),
    wal,
    view,
    machine,
    appliedOf: (g) => applied.get(g) ?? 0,
    founders: () => [1],
    random: (g) => new Xoshiro128(g + 1),
    log: quiet,
    queuedMax: 10_000,
    ...over,
  });
}

const put = (id: string): Command => ({ t: 'put', id, at: 1, fields: { token_budget: 1_000_000 }, create: 'context' });
const append = (id: string, k: number): Command => ({ t: 'append', id, at: 2 + k, messages: [sized(5, `${id}-${k}`)], batch: false });

/** Proposes `cmds` in the order given, a few per round, and returns their answers. */
async function drive(r: GroupReplicas, cmds: Command[], perRound: number, applied: Map<number, number>): Promise<unknown[]> {
  const answers: Array<Promise<unknown>> = [];
  for (let i = 0; i < cmds.length; i += perRound) {
    for (const c of cmds.slice(i, i + perRound)) answers.push(r.propose(groupOf(c.id, Groups), c));
    for (const [g, index] of r.round().applied) applied.set(g, index);
  }
  for (const [g, index] of r.round().applied) applied.set(g, index);
  return Promise.all(answers);
}

describe('GroupReplicas on one node', () => {
  it('answers every command with what applying it directly gives, whatever the batching (fast-check)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 0, max: 9 }), { minLength: 1, maxLength: 80 }), fc.integer({ min: 1, max: 17 }), async (picks, perRound) => {
        const dir = tempDir();
        dirs.push(dir);
        const view = new MemoryView(Groups);
        const applied = new Map<number, number>();
        const r = replicas(RaftWal.open(dir), view, applied);
        r.campaignAlone();
        r.round();
        const ids = Array.from({ length: 10 }, (_, i) => `c${i}`);
        const cmds: Command[] = [...ids.map(put), ...picks.map((p, k) => append(ids[p]!, k))];
        const answers = await drive(r, cmds, perRound, applied);
        const oracle = new MemoryView(Groups);
        const expected = cmds.map((c) => apply(oracle, c, machine));
        expect(answers).toEqual(expected);
        for (const id of ids) expect(view.getContext(id)).toEqual(oracle.getContext(id));
      }),
      { numRuns: 25 },
    );
  });

  it('after a restart, committed commands are applied again from where the state left off, exactly once', async () => {
    const dir = tempDir();
    dirs.push(dir);
    let wal = RaftWal.open(dir);
    const view = new MemoryView(Groups);
    const applied = new Map<number, number>();
    let r = replicas(wal, view, applied);
    r.campaignAlone();
    r.round();
    const cmds = [put('a'), put('b'), ...Array.from({ length: 30 }, (_, k) => append(k % 2 ? 'a' : 'b', k))];
    await drive(r, cmds, 4, applied);
    wal.close();

    // The state store lost everything (say it was restored empty): every acknowledged command
    // comes back. Those up to the persisted commit index at once; the last ones once the node
    // leads again (a commit-only change is not fsynced; the entries are, so the new term commits
    // them again).
    wal = RaftWal.open(dir);
    const fresh = new MemoryView(Groups);
    r = replicas(wal, fresh, new Map());
    r.round();
    // The first round applies what the persisted commit index covers, with no tick or campaign.
    expect(fresh.getContext('a')).toBeDefined();
    r.campaignAlone();
    r.round();
    expect(fresh.getContext('a')!.last_seq).toBe(15);
    expect(fresh.getContext('b')!.last_seq).toBe(15);
    expect(fresh.getContext('a')).toEqual(view.getContext('a'));
    expect(fresh.getContext('b')).toEqual(view.getContext('b'));
    // It takes new writes.
    const more = r.propose(groupOf('a', Groups), append('a', 99));
    r.round();
    await expect(more).resolves.toMatchObject({ ok: true });
    expect(fresh.getContext('a')!.last_seq).toBe(16);
    wal.close();

    // A state store that holds everything up to the last index of each log: nothing is applied
    // twice, also after the node leads again.
    wal = RaftWal.open(dir);
    const full = new MemoryView(Groups);
    for (const c of [...cmds, append('a', 99)]) apply(full, c, machine);
    const last = new Map<number, number>();
    for (const g of wal.groups()) last.set(g, wal.group(g).lastIndex());
    r = replicas(wal, full, last);
    r.round();
    r.campaignAlone();
    r.round();
    expect(full.getContext('a')!.last_seq).toBe(16);
    expect(full.getContext('b')!.last_seq).toBe(15);
    wal.close();
  });

  it('a group this node does not lead refuses writes with 503 unavailable; a full queue with 503 overloaded', async () => {
    const dir = tempDir();
    dirs.push(dir);
    const wal = RaftWal.open(dir);
    const view = new MemoryView(Groups);
    // Founded with a second voter that never answers: no leader, ever.
    const r = replicas(wal, view, new Map(), { founders: () => [1, 2], queuedMax: 3 });
    r.campaignAlone();
    r.round();
    expect(r.leads(groupOf('x', Groups))).toBe(false);
    const refused = r.propose(groupOf('x', Groups), put('x'));
    r.round();
    await expect(refused).rejects.toMatchObject({ code: 'unavailable', status: 503 });
    const queued = [r.propose(0, put('q1')), r.propose(0, put('q2')), r.propose(0, put('q3'))];
    await expect(r.propose(0, put('q4'))).rejects.toMatchObject({ code: 'overloaded', status: 503 });
    r.round();
    for (const q of queued) await expect(q).rejects.toMatchObject({ code: 'unavailable' });
    wal.close();
  });

  it('a failed persist answers every waiting write with 503 and refuses new ones', async () => {
    const dir = tempDir();
    dirs.push(dir);
    const wal = RaftWal.open(dir);
    const r = replicas(wal, new MemoryView(Groups), new Map());
    r.campaignAlone();
    r.round();
    const write = r.propose(groupOf('f', Groups), put('f'));
    // The disk goes away under the log (its directory is removed and replaced by a file).
    fs.rmSync(dir, { recursive: true, force: true });
    fs.writeFileSync(dir, 'not a directory');
    wal.persist = () => {
      throw new Error('EIO: the disk is gone');
    };
    r.round();
    await expect(write).rejects.toMatchObject({ code: 'unavailable' });
    await expect(r.propose(0, put('g'))).rejects.toMatchObject({ code: 'unavailable' });
    fs.rmSync(dir, { force: true });
  });
});

describe('GroupReplicas on three nodes (in-process network, real logs)', () => {
  interface Replica {
    wal: RaftWal;
    view: MemoryView;
    r: GroupReplicas;
  }
  const ids = [1, 2, 3];

  function start(dir: string, id: number, seed: number): Replica {
    const wal = RaftWal.open(`${dir}/n${id}`);
    const view = new MemoryView(Groups);
    const r = replicas(wal, view, new Map(), { raftId: id, founders: () => ids, random: (g) => new Xoshiro128(seed * 1_000 + id * 100 + g), electionTicks: 10, heartbeatTicks: 2 });
    return { wal, view, r };
  }

  /** Runs rounds on the live nodes, delivers their messages between live nodes, ticks. */
  function pump(nodes: Map<number, Replica>, down: Set<number>, loops: number): void {
    for (let k = 0; k < loops; k++) {
      const inbox: Array<{ to: number; group: number; message: Parameters<GroupReplicas['step']>[1] }> = [];
      for (const [id, n] of nodes) {
        if (down.has(id)) continue;
        for (const { group, message } of n.r.round().messages) if (!down.has(message.to)) inbox.push({ to: message.to, group, message });
      }
      for (const m of inbox) nodes.get(m.to)!.r.step(m.group, m.message);
      if (k % 2 === 0) for (const [id, n] of nodes) if (!down.has(id)) n.r.tick();
    }
  }

  function leaderOf(nodes: Map<number, Replica>, down: Set<number>, g: number): Replica | undefined {
    for (const [id, n] of nodes) if (!down.has(id) && n.r.leads(g)) return n;
    return undefined;
  }

  /** Proposes each command at its group's current leader and pumps until it is answered. */
  async function write(nodes: Map<number, Replica>, down: Set<number>, cmd: Command): Promise<unknown> {
    const g = groupOf(cmd.id, Groups);
    for (let attempt = 0; attempt < 200; attempt++) {
      const leader = leaderOf(nodes, down, g);
      if (leader === undefined) {
        pump(nodes, down, 5);
        continue;
      }
      let settled: { ok: true; v: unknown } | { ok: false; e: unknown } | undefined;
      leader.r.propose(g, cmd).then(
        (v) => (settled = { ok: true, v }),
        (e: unknown) => (settled = { ok: false, e }),
      );
      for (let k = 0; k < 50 && settled === undefined; k++) {
        pump(nodes, down, 1);
        await Promise.resolve();
      }
      if (settled?.ok) return settled.v;
    }
    throw new Error(`no leader took ${cmd.t} ${cmd.id}`);
  }

  /** Three replicas on fresh logs, run until they have elected their leaders. */
  function cluster(seed: number): { dir: string; nodes: Map<number, Replica>; down: Set<number> } {
    const dir = tempDir();
    dirs.push(dir);
    const nodes = new Map(ids.map((id) => [id, start(dir, id, seed)] as const));
    const down = new Set<number>();
    pump(nodes, down, 60);
    return { dir, nodes, down };
  }

  it('replicates the context state machine: every replica holds what applying the commands directly gives', async () => {
    const { nodes, down } = cluster(1);
    const names = Array.from({ length: 8 }, (_, i) => `r${i}`);
    const cmds: Command[] = [...names.map(put), ...Array.from({ length: 40 }, (_, k) => append(names[k % names.length]!, k))];
    const oracle = new MemoryView(Groups);
    for (const c of cmds) expect(await write(nodes, down, c)).toEqual(apply(oracle, c, machine));
    pump(nodes, down, 20); // followers learn the last commit index
    for (const n of nodes.values()) for (const id of names) expect(n.view.getContext(id)).toEqual(oracle.getContext(id));
    for (const n of nodes.values()) n.wal.close();
  });

  it('a crashed node leaves the others writable; restarted from its log, it catches up to the same state', async () => {
    const { dir, nodes, down } = cluster(2);
    const names = Array.from({ length: 8 }, (_, i) => `k${i}`);
    const oracle = new MemoryView(Groups);
    const run = async (cmds: Command[]) => {
      for (const c of cmds) expect(await write(nodes, down, c)).toEqual(apply(oracle, c, machine));
    };
    await run([...names.map(put), ...Array.from({ length: 16 }, (_, k) => append(names[k % 8]!, k))]);
    // The leader of the first id's group crashes: its in-memory state is gone, its log stays.
    const victim = [...nodes].find(([, n]) => n.r.leads(groupOf(names[0]!, Groups)))![0];
    nodes.get(victim)!.wal.close();
    down.add(victim);
    await run(Array.from({ length: 16 }, (_, k) => append(names[k % 8]!, 100 + k)));
    expect(leaderOf(nodes, down, groupOf(names[0]!, Groups))).toBeDefined();
    // It restarts from its log with an empty state store: its committed entries are applied
    // again, and the leaders bring it up to date.
    nodes.set(victim, start(dir, victim, 3));
    down.delete(victim);
    pump(nodes, down, 80);
    for (const n of nodes.values()) for (const id of names) expect(n.view.getContext(id), `node ${[...nodes].find(([, x]) => x === n)![0]} ${id}`).toEqual(oracle.getContext(id));
    for (const n of nodes.values()) n.wal.close();
  });

  it('deferred rounds: stepped, ticked and proposed to while their fsync is in flight, every replica still applies what applying directly gives', async () => {
    // Each node runs roundDeferred() one at a time, as ReplicaHost does; messages (a leader's
    // early ones as soon as its write is issued) are delivered while the other nodes' rounds wait
    // for their fdatasync, and proposals arrive at any time.
    const dir = tempDir();
    dirs.push(dir);
    type Inbox = Array<{ to: number; group: number; message: Parameters<GroupReplicas['step']>[1] }>;
    const inbox: Inbox = [];
    const nodes = new Map<number, Replica & { inflight: boolean }>();
    for (const id of ids) {
      const wal = RaftWal.open(`${dir}/n${id}`);
      const view = new MemoryView(Groups);
      const r = replicas(wal, view, new Map(), {
        raftId: id,
        founders: () => ids,
        random: (g) => new Xoshiro128(7_000 + id * 100 + g),
        electionTicks: 10,
        heartbeatTicks: 2,
        sendEarly: (out) => {
          for (const { group, message } of out) inbox.push({ to: message.to, group, message });
        },
      });
      nodes.set(id, { wal, view, r, inflight: false });
    }
    let ticks = 0;
    const turn = async (): Promise<void> => {
      for (const n of nodes.values()) {
        if (n.inflight || !n.r.hasWork()) continue;
        n.inflight = true;
        void n.r.roundDeferred().then((res) => {
          n.inflight = false;
          for (const { group, message } of res.messages) inbox.push({ to: message.to, group, message });
        });
      }
      for (const m of inbox.splice(0)) nodes.get(m.to)!.r.step(m.group, m.message);
      // Time passes with the rounds (an fdatasync takes far longer than a turn): a tick only
      // once no round is in flight, else followers would time out between two heartbeats.
      if (![...nodes.values()].some((n) => n.inflight) && ++ticks % 2 === 0) for (const n of nodes.values()) n.r.tick();
      await new Promise((resolve) => setImmediate(resolve));
    };
    for (let k = 0; k < 200; k++) await turn();
    const names = Array.from({ length: 8 }, (_, i) => `d${i}`);
    const oracle = new MemoryView(Groups);
    const cmds: Command[] = [...names.map(put), ...Array.from({ length: 48 }, (_, k) => append(names[k % names.length]!, k))];
    for (let i = 0; i < cmds.length; i += 4) {
      // Four at a time (distinct contexts), each at its group's leader. Leaders are stable here,
      // so none is retried: a retry without an idempotency key could apply a command twice.
      const batch = cmds.slice(i, i + 4);
      const answers = batch.map(async (c) => {
        const g = groupOf(c.id, Groups);
        let leader = [...nodes.values()].find((n) => n.r.leads(g));
        const until = Date.now() + 5_000;
        while (leader === undefined && Date.now() < until) {
          await turn();
          leader = [...nodes.values()].find((n) => n.r.leads(g));
        }
        if (leader === undefined) throw new Error(`group ${g} has no leader`);
        let done: { v: unknown } | undefined;
        void leader.r.propose(g, c).then((v) => (done = { v }));
        while (done === undefined && Date.now() < until) await turn();
        if (done === undefined) throw new Error(`${c.t} ${c.id} was not answered`);
        return done.v;
      });
      const got = await Promise.all(answers);
      for (let j = 0; j < batch.length; j++) expect(got[j]).toEqual(apply(oracle, batch[j]!, machine));
    }
    // Followers learn the last commit index with the next heartbeats.
    const caughtUp = (): boolean => {
      for (let g = 0; g < Groups; g++) {
        const st = [...nodes.values()].map((n) => n.r.status(g)!);
        const commit = Math.max(...st.map((x) => x.commit));
        if (st.some((x) => x.applied < commit)) return false;
      }
      return ![...nodes.values()].some((n) => n.inflight);
    };
    const until = Date.now() + 5_000;
    while (!caughtUp() && Date.now() < until) await turn();
    for (const n of nodes.values()) for (const id of names) expect(n.view.getContext(id)).toEqual(oracle.getContext(id));
    for (const n of nodes.values()) n.wal.close();
  });

  it('ReadIndex: a leader serves a read once a quorum confirms it still leads; a cut-off leader never does', async () => {
    const { nodes, down } = cluster(4);
    await write(nodes, down, put('read-me'));
    const g = groupOf('read-me', Groups);
    const leader = leaderOf(nodes, down, g)!;
    let confirmed = false;
    void leader.r.readIndex(g).then(() => (confirmed = true));
    leader.r.round(); // asked, and the heartbeat with the read's context goes out
    await Promise.resolve();
    expect(confirmed).toBe(false);
    pump(nodes, down, 4);
    await Promise.resolve();
    expect(confirmed).toBe(true);
    // Cut the leader off: its read is never confirmed; once it steps down it says so.
    const leaderId = [...nodes].find(([, n]) => n === leader)![0];
    for (const id of ids) if (id !== leaderId) down.add(id);
    let outcome: string | undefined;
    leader.r.readIndex(g).then(
      () => (outcome = 'served'),
      (err: Error) => (outcome = err.message),
    );
    pump(nodes, down, 100);
    await Promise.resolve();
    expect(outcome).toMatch(/lost its leader|does not lead/);
    for (const n of nodes.values()) n.wal.close();
  });
});

describe('GroupReplicas compaction', () => {
  it('compacting to what the state store holds keeps the Raft log bounded, and a restart still resumes exactly', async () => {
    const dir = tempDir();
    dirs.push(dir);
    let wal = RaftWal.open(dir, { segmentBytesMax: 16 * 1024 });
    const view = new MemoryView(Groups);
    const applied = new Map<number, number>();
    let r = replicas(wal, view, applied);
    r.campaignAlone();
    r.round();
    const names = Array.from({ length: 6 }, (_, i) => `z${i}`);
    await drive(r, names.map(put), 6, applied);
    const diskBytes = () => fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(`${dir}/${f}`).size, 0);
    let peak = 0;
    for (let batch = 0; batch < 40; batch++) {
      await drive(r, Array.from({ length: 20 }, (_, k) => append(names[k % 6]!, batch * 20 + k)), 10, applied);
      // The state store (here the MemoryView) holds everything applied: compact to it.
      r.compactTo(applied);
      peak = Math.max(peak, diskBytes());
    }
    // 800 appends of ~250 bytes (~145 KB of log without compaction) went through; the log kept
    // a few 16 KiB segments at most.
    expect(peak).toBeLessThan(4 * 16 * 1024);
    for (const [g, index] of applied) expect(wal.group(g).firstIndex()).toBe(index + 1);
    wal.close();
    // A restart resumes from the store's applied indexes with nothing to apply again.
    wal = RaftWal.open(dir, { segmentBytesMax: 16 * 1024 });
    const before = names.map((id) => view.getContext(id)!.last_seq);
    r = replicas(wal, view, applied);
    r.round();
    r.campaignAlone();
    r.round();
    expect(names.map((id) => view.getContext(id)!.last_seq)).toEqual(before);
    const next = r.propose(groupOf('z0', Groups), append('z0', 9_999));
    r.round();
    await expect(next).resolves.toMatchObject({ ok: true });
    wal.close();
  });
});

/** The deterministic cluster simulator: CI's seed sweep, replay, and the checker itself. */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { simCommand } from '../../actors/raft/sim/cli.js';
import { Invariants, Violation } from '../../actors/raft/sim/invariants.js';
import { SimNetwork } from '../../actors/raft/sim/network.js';
import { CommitTimeoutsMax, LeaderTimeoutsMax, runSeed, runSeeds } from '../../actors/raft/sim/run.js';
import { SimStorage } from '../../actors/raft/sim/sim-storage.js';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { EntryType, type Entry } from '../../actors/raft/types.js';
import { msg, entriesOf } from './support.js';

describe('simulation', () => {
  it('200 seeds × 2,000 steps: every invariant holds after every event, and every seed is live after healing', () => {
    const totals: Record<string, number> = {};
    const res = runSeeds({
      seeds: 200,
      start: 1,
      steps: 2000,
      opts: { traceLines: 40 },
      onResult: (r) => {
        for (const [k, v] of Object.entries(r.stats)) totals[k] = (totals[k] ?? 0) + v;
      },
    });
    const failures = res.failures.map((f) => `seed ${f.seed}: ${f.violations[0]}\n${f.traceTail.slice(-15).join('\n')}`);
    expect(failures).toEqual([]);
    expect(res.violations).toBe(0);
    expect(res.leaderTimeoutsMax).toBeLessThanOrEqual(LeaderTimeoutsMax);
    expect(res.commitTimeoutsMax).toBeLessThanOrEqual(CommitTimeoutsMax);
    // The faults and features were exercised, not just configured.
    for (const k of ['crashes', 'restarts', 'snapshotsInstalled', 'compactions', 'confChangesApplied', 'transfers', 'readsServed', 'messagesLost']) {
      expect(totals[k], k).toBeGreaterThan(0);
    }
    expect(totals.electionsWon!).toBeGreaterThan(400);
    expect(totals.commandsAcked).toBe(totals.commandsIssued);
  }, 120_000);

  it('the same seed replays the same run, event for event', () => {
    for (const seed of [3, 77, 1234]) {
      const a = runSeed(seed, 2000, { traceLines: 200 });
      const b = runSeed(seed, 2000, { traceLines: 200 });
      expect(b.traceDigest).toBe(a.traceDigest);
      expect(b.traceTail).toEqual(a.traceTail);
      expect(b.stats).toEqual(a.stats);
    }
    expect(runSeed(4, 2000).traceDigest).not.toBe(runSeed(3, 2000).traceDigest);
  });

  it('a run with no steps is only the liveness phase, and passes', () => {
    const r = runSeed(9, 0);
    expect(r.violations).toEqual([]);
    expect(r.leaderTicks).toBeDefined();
  });
});

describe('fastpaca sim', () => {
  afterEach(() => vi.restoreAllMocks());

  it('prints one line per failing seed, then "seeds: N, violations: V" last, and exits 0 when V is 0', async () => {
    const out: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
      out.push(String(s));
      return true;
    });
    const code = await simCommand(['--seeds', '5', '--start', '10', '--steps', '500']);
    const lines = out.join('').trimEnd().split('\n');
    expect(lines.at(-1)).toBe('seeds: 5, violations: 0');
    expect(code).toBe(0);
  });

  it('rejects bad arguments with exit code 2', async () => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    expect(await simCommand(['--seeds', 'many'])).toBe(2);
    expect(await simCommand(['--bogus'])).toBe(2);
  });
});

describe('the checker catches what it claims to', () => {
  const ent = (index: number, term: number, data = `c${index}`): Entry => ({ index, term, type: EntryType.Normal, data: new TextEncoder().encode(data) });

  it('log matching: the same (index, term) with different data or predecessors', () => {
    const inv = new Invariants();
    inv.onAppend(1, [ent(2, 2), ent(3, 2)], 1);
    inv.onAppend(2, [ent(2, 2)], 1);
    expect(() => inv.onAppend(3, [ent(2, 2, 'other')], 1)).toThrow(Violation);
    expect(() => inv.onAppend(3, [ent(3, 2)], 1)).toThrow(/log matching/);
    expect(() => inv.onAppend(3, [ent(4, 1)], 2)).toThrow(/terms decrease/);
  });

  it('durable state: the term, the commit and a vote of a term never go back', () => {
    const inv = new Invariants();
    inv.onDurable(1, { term: 3, vote: 2, commit: 5 });
    expect(() => inv.onDurable(1, { term: 2, vote: 2, commit: 5 })).toThrow(/term went back/);
    expect(() => inv.onDurable(1, { term: 3, vote: 2, commit: 4 })).toThrow(/commit went back/);
    expect(() => inv.onDurable(1, { term: 3, vote: 1, commit: 5 })).toThrow(/changed its vote/);
  });

  it('state machine safety, acknowledged writes and stale reads', () => {
    const inv = new Invariants();
    const withCmd = (index: number, id: number): Entry => {
      const d = new Uint8Array(4);
      new DataView(d.buffer).setUint32(0, id, true);
      return { index, term: 2, type: EntryType.Normal, data: d };
    };
    inv.onApply(1, withCmd(2, 7));
    expect(() => inv.onApply(2, withCmd(2, 8))).toThrow(/state machine safety/);
    inv.onAck(7, 2);
    expect(() => inv.onAck(9, 2)).toThrow(/acknowledged/);
    expect(() => inv.onRead(1, 'r', 1, 2)).toThrow(/stale read/);
  });
});

describe('simulated disk and network', () => {
  it('a crash loses every write not synced, and keeps every synced one', () => {
    const durable: number[] = [];
    const s = new SimStorage(MemoryStorage.bootstrap({ voters: [1], learners: [] }), { onAppend: () => {}, onDurable: (hs) => durable.push(hs.term) });
    s.append(entriesOf([2, 2]));
    s.setHardState({ term: 2, vote: 1, commit: 1 });
    s.sync();
    s.append(entriesOf([2, 2], 4));
    s.setHardState({ term: 3, vote: 0, commit: 3 });
    expect(s.lastIndex()).toBe(5);
    s.crash();
    expect(s.lastIndex()).toBe(3);
    expect(s.initialState().hardState).toEqual({ term: 2, vote: 1, commit: 1 });
    expect(durable).toEqual([2]);
  });

  it('drops, duplicates, delays and cuts links one way, all from its seed', () => {
    const run = (seed: number) => {
      const net = new SimNetwork(new Xoshiro128(seed), 100);
      net.quality = { dropRate: 0.2, dupRate: 0.2, delayRate: 0.2, reorderRate: 0.5 };
      net.cut(1, 2);
      for (let i = 0; i < 50; i++) net.send(msg('heartbeat', { from: 1 + (i % 3), to: 1 + ((i + 1) % 3), term: i + 1 }), 0);
      const got: string[] = [];
      for (let now = 0; now < 100; now++) {
        for (let k = 0; k < 2; k++) {
          const d = net.take(now);
          if (d) got.push(`${d.m.from}>${d.m.to}:${d.m.term}${d.lost ? 'x' : ''}`);
        }
      }
      return got;
    };
    const a = run(1);
    expect(run(1)).toEqual(a);
    expect(run(2)).not.toEqual(a);
    expect(a.filter((s) => s.startsWith('1>2:')).every((s) => s.endsWith('x'))).toBe(true);
    expect(a.filter((s) => s.startsWith('3>1:')).some((s) => !s.endsWith('x'))).toBe(true);
    expect(a.length).not.toBe(50); // some lost at send, some sent twice
  });
});

/** Quorum arithmetic against a naive oracle (like etcd's quorum/quick_test.go), the inflight
 * window, the config checks and the seeded random source. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RaftConfigError, RaftDefaults, validateConfig, type RaftConfigInput } from '../../actors/raft/config.js';
import { Inflights } from '../../actors/raft/inflights.js';
import { committedIndex, majority, voteResult, VoteResult } from '../../actors/raft/quorum.js';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { MemoryStorage } from '../../actors/raft/storage.js';

/** The oracle: the largest index that at least a majority has acknowledged, by brute force. */
function naiveCommitted(acked: number[]): number {
  if (acked.length === 0) return Infinity;
  let best = 0;
  for (const candidate of acked) {
    const holders = acked.filter((a) => a >= candidate).length;
    if (holders > acked.length / 2) best = Math.max(best, candidate);
  }
  return best;
}

function naiveVote(answers: Array<boolean | undefined>): VoteResult {
  if (answers.length === 0) return VoteResult.Won;
  const yes = answers.filter((a) => a === true).length;
  const no = answers.filter((a) => a === false).length;
  if (yes > answers.length / 2) return VoteResult.Won;
  if (no >= answers.length - Math.floor(answers.length / 2)) return VoteResult.Lost;
  return VoteResult.Pending;
}

describe('quorum', () => {
  it('committedIndex agrees with the naive oracle', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 50 }), { minLength: 0, maxLength: 11 }), (acked) => {
        const voters = acked.map((_, i) => i + 1);
        expect(committedIndex(voters, (id) => acked[id - 1]!)).toBe(naiveCommitted(acked));
      }),
      { numRuns: 2000, seed: 4 },
    );
  });

  it('voteResult agrees with the naive oracle', () => {
    fc.assert(
      fc.property(fc.array(fc.option(fc.boolean(), { nil: undefined }), { minLength: 0, maxLength: 11 }), (answers) => {
        const voters = answers.map((_, i) => i + 1);
        const votes = new Map<number, boolean>();
        answers.forEach((a, i) => a !== undefined && votes.set(i + 1, a));
        expect(voteResult(voters, votes)).toBe(naiveVote(answers));
      }),
      { numRuns: 2000, seed: 5 },
    );
  });

  it('a majority of n is more than half', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map(majority)).toEqual([1, 2, 2, 3, 3, 4, 4]);
  });

  it('votes from non-voters do not count', () => {
    expect(voteResult([1, 2, 3], new Map([[1, true], [4, true], [5, true]]))).toBe(VoteResult.Pending);
  });
});

describe('inflights', () => {
  it('fills by count, frees up to an index, and never holds more than its capacity', () => {
    const f = new Inflights(3, 1000);
    f.add(5, 10);
    f.add(7, 10);
    f.add(9, 10);
    expect(f.full()).toBe(true);
    expect(() => f.add(10, 1)).toThrow(/full/);
    f.freeLE(7);
    expect(f.count).toBe(1);
    expect(f.bytes).toBe(10);
    f.add(11, 10);
    f.add(12, 10);
    expect(f.full()).toBe(true);
    f.freeFirstOne();
    expect(f.count).toBe(2);
    f.freeLE(100);
    expect(f.count).toBe(0);
    expect(f.bytes).toBe(0);
  });

  it('fills by bytes', () => {
    const f = new Inflights(100, 50);
    f.add(1, 30);
    expect(f.full()).toBe(false);
    f.add(2, 30);
    expect(f.full()).toBe(true);
    f.freeLE(1);
    expect(f.full()).toBe(false);
  });

  it('requires increasing indexes', () => {
    const f = new Inflights(4, 100);
    f.add(5, 1);
    expect(() => f.add(5, 1)).toThrow(/increase/);
  });

  it('matches a plain queue under random use', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom('add', 'free', 'one'), fc.nat({ max: 5 })), { maxLength: 200 }), (ops) => {
        const f = new Inflights(4, 40);
        const q: Array<[number, number]> = [];
        let next = 1;
        for (const [op, n] of ops) {
          if (op === 'add') {
            if (f.full()) continue;
            f.add(next, n + 1);
            q.push([next, n + 1]);
            next += 1 + n;
          } else if (op === 'free') {
            const upTo = (q[0]?.[0] ?? 0) + n;
            f.freeLE(upTo);
            while (q.length > 0 && q[0]![0] <= upTo) q.shift();
          } else {
            f.freeFirstOne();
            q.shift();
          }
          expect(f.count).toBe(q.length);
          expect(f.bytes).toBe(q.reduce((s, [, b]) => s + b, 0));
          expect(f.full()).toBe(q.length === 4 || f.bytes >= 40);
        }
      }),
      { numRuns: 300, seed: 6 },
    );
  });
});

describe('config', () => {
  const base = (): RaftConfigInput => ({ id: 1, storage: new MemoryStorage(), random: new Xoshiro128(1) });

  it('fills the defaults', () => {
    const c = validateConfig(base());
    expect(c.electionTicks).toBe(RaftDefaults.electionTicks);
    expect(c.preVote).toBe(true);
    expect(c.checkQuorum).toBe(true);
  });

  it.each([
    [{ id: 0 }, /id must be/],
    [{ id: 1.5 }, /id must be/],
    [{ heartbeatTicks: 0 }, /heartbeatTicks/],
    [{ electionTicks: 3, heartbeatTicks: 3 }, /must exceed heartbeatTicks/],
    [{ electionTicks: 5, heartbeatTicks: 3, checkQuorum: true }, /checkQuorum requires/],
    [{ msgBytesMax: 0 }, /msgBytesMax/],
    [{ inflightMsgsMax: 0 }, /inflightMsgsMax/],
    [{ msgBytesMax: 100, inflightBytesMax: 99 }, /inflightBytesMax/],
    [{ uncommittedBytesMax: 0 }, /uncommittedBytesMax/],
    [{ committedBytesPerReadyMax: 0 }, /committedBytesPerReadyMax/],
    [{ readIndexPendingMax: 0 }, /readIndexPendingMax/],
    [{ outboxMsgsMax: 8 }, /outboxMsgsMax/],
    [{ applied: -1 }, /applied/],
  ] as Array<[Partial<RaftConfigInput>, RegExp]>)('rejects %o', (patch, why) => {
    expect(() => validateConfig({ ...base(), ...patch })).toThrow(RaftConfigError);
    expect(() => validateConfig({ ...base(), ...patch })).toThrow(why);
  });

  it('accepts electionTicks = heartbeatTicks + 1 without check-quorum', () => {
    expect(() => validateConfig({ ...base(), electionTicks: 4, heartbeatTicks: 3, checkQuorum: false })).not.toThrow();
  });
});

describe('random', () => {
  it('is deterministic per seed, and different seeds differ', () => {
    const a = new Xoshiro128(42);
    const b = new Xoshiro128(42);
    const c = new Xoshiro128(43);
    const xs = Array.from({ length: 100 }, () => a.u32());
    expect(Array.from({ length: 100 }, () => b.u32())).toEqual(xs);
    expect(Array.from({ length: 100 }, () => c.u32())).not.toEqual(xs);
  });

  it('int(n) stays in [0, n) and covers it evenly enough', () => {
    const r = new Xoshiro128(7);
    const counts = new Array<number>(10).fill(0);
    for (let i = 0; i < 100_000; i++) counts[r.int(10)]!++;
    for (const n of counts) expect(Math.abs(n - 10_000)).toBeLessThan(500);
    expect(() => r.int(0)).toThrow();
    for (let i = 0; i < 1000; i++) expect(r.float()).toBeLessThan(1);
  });
});

/**
 * The fault test's history checker catches every kind of violation it claims to: a sound
 * history, generated, passes; the same history with one injected bug fails on that count.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkHistory, type Attempt, type ReadObservation } from '../support/history.js';

interface History {
  attempts: Attempt[];
  reads: ReadObservation[];
  logs: Map<string, Array<{ seq: number; text: string }>>;
}

/**
 * A sound history: per id, appends one after another (some acknowledged, some not but applied,
 * some not applied at all), and reads of prefixes of the final log.
 */
const sound = fc
  .array(
    fc.array(fc.constantFrom('acked', 'applied-unacked', 'not-applied'), { minLength: 2, maxLength: 12 }),
    { minLength: 1, maxLength: 4 },
  )
  .chain((perId) =>
    fc.array(fc.tuple(fc.nat(perId.length - 1), fc.nat(12)), { maxLength: 6 }).map((readSpecs): History => {
      const attempts: Attempt[] = [];
      const logs = new Map<string, Array<{ seq: number; text: string }>>();
      perId.forEach((kinds, i) => {
        const id = `c${i}`;
        const log: Array<{ seq: number; text: string }> = [];
        kinds.forEach((kind, k) => {
          const text = `${id}-${k}`;
          const start = k * 10;
          if (kind !== 'not-applied') log.push({ seq: log.length + 1, text });
          attempts.push({ id, text, start, end: start + 5, seq: kind === 'acked' ? log.length : undefined });
        });
        logs.set(id, log);
      });
      const reads = readSpecs.map(([i, n]) => {
        const log = logs.get(`c${i}`)!;
        return { id: `c${i}`, messages: log.slice(0, Math.min(n, log.length)) };
      });
      return { attempts, reads, logs };
    }),
  );

const clone = (h: History): History => ({
  attempts: h.attempts.map((a) => ({ ...a })),
  reads: h.reads.map((r) => ({ id: r.id, messages: r.messages.map((m) => ({ ...m })) })),
  logs: new Map([...h.logs].map(([id, log]) => [id, log.map((m) => ({ ...m }))])),
});

const zero = { lost: 0, duplicated: 0, misplaced: 0, reordered: 0, phantom: 0, gaps: 0 };
const counts = (h: History) => {
  const v = checkHistory(h.attempts, h.reads, h.logs);
  return { lost: v.lost, duplicated: v.duplicated, misplaced: v.misplaced, reordered: v.reordered, phantom: v.phantom, gaps: v.gaps };
};

describe('the fault test history checker', () => {
  it('passes every sound history (fast-check)', () => {
    fc.assert(
      fc.property(sound, (h) => {
        expect(counts(h)).toEqual(zero);
      }),
    );
  });

  it('catches a lost acknowledged append, a duplicate, a gap, a phantom read and acknowledgement order broken (fast-check)', () => {
    fc.assert(
      fc.property(sound, fc.nat(), (h, pick) => {
        const acked = h.attempts.filter((a) => a.seq !== undefined);
        fc.pre(acked.length > 0);
        const a = acked[pick % acked.length]!;

        // Lost: the acknowledged message is not in the final log (the ones after it move down).
        const lost = clone(h);
        const log = lost.logs.get(a.id)!;
        log.splice(a.seq! - 1, 1);
        log.forEach((m, i) => (m.seq = i + 1));
        lost.reads = [];
        expect(counts(lost).lost).toBeGreaterThan(0);

        // Duplicated: applied twice (a retry without its idempotency key taking effect).
        const dup = clone(h);
        const dl = dup.logs.get(a.id)!;
        dl.push({ seq: dl.length + 1, text: a.text });
        expect(counts(dup).duplicated).toBe(1);

        // A gap in the seqs.
        const gap = clone(h);
        const gl = gap.logs.get(a.id)!;
        gl[gl.length - 1]!.seq += 1;
        expect(counts(gap).gaps).toBe(1);

        // Phantom: a read saw a message the final log does not hold.
        const phantom = clone(h);
        phantom.reads.push({ id: a.id, messages: [{ seq: 1, text: 'never-written' }] });
        expect(counts(phantom).phantom).toBe(1);

        // Misplaced: acknowledged at one seq, found at another.
        const misplaced = clone(h);
        misplaced.attempts.find((x) => x.text === a.text)!.seq = a.seq! + 1_000;
        expect(counts(misplaced).misplaced).toBe(1);
      }),
    );
  });

  it('catches two appends whose log order contradicts their acknowledgement order', () => {
    const attempts: Attempt[] = [
      { id: 'c', text: 'first', start: 0, end: 5, seq: 2 },
      { id: 'c', text: 'second', start: 10, end: 15, seq: 1 },
    ];
    const logs = new Map([['c', [{ seq: 1, text: 'second' }, { seq: 2, text: 'first' }]]]);
    expect(checkHistory(attempts, [], logs)).toMatchObject({ reordered: 1, lost: 0, misplaced: 0 });
    // Overlapping appends may land in either order.
    attempts[1]!.start = 3;
    expect(checkHistory(attempts, [], logs).reordered).toBe(0);
  });
});

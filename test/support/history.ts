/**
 * The fault test's history checker, as a pure function so that it can be shown to catch what it
 * looks for (test/unit/history.test.ts injects each kind of bug into a sound history).
 */

export interface Attempt {
  id: string;
  /** Unique per append: what identifies the message in the log. */
  text: string;
  /** The client's wall-clock bounds of the whole operation, retries included. */
  start: number;
  end: number;
  /** The seq the cluster acknowledged, or undefined when no attempt was acknowledged. */
  seq: number | undefined;
}

export interface ReadObservation {
  id: string;
  messages: Array<{ seq: number; text: string }>;
}

export interface Verdict {
  acknowledged: number;
  /** Acknowledged appends missing from the final log. */
  lost: number;
  /** Messages that appear more than once in a final log. */
  duplicated: number;
  /** Acknowledged appends present at a seq other than the one acknowledged. */
  misplaced: number;
  /** Pairs where an append acknowledged before another began has the larger (or same) seq. */
  reordered: number;
  /** Messages a read returned that the final log does not hold at that seq. */
  phantom: number;
  /** Final logs whose seqs are not 1, 2, 3, ... */
  gaps: number;
  /** Unacknowledged appends (each may or may not be in the log, at most once). */
  indeterminate: number;
  /** Messages in all final logs. */
  present: number;
}

export function checkHistory(attempts: readonly Attempt[], reads: readonly ReadObservation[], finalLogs: ReadonlyMap<string, ReadonlyArray<{ seq: number; text: string }>>): Verdict {
  const acknowledged = attempts.filter((a) => a.seq !== undefined);
  let duplicated = 0;
  let gaps = 0;
  const bySeq = new Map<string, Map<string, number>>();
  for (const [id, log] of finalLogs) {
    if (log.some((m, i) => m.seq !== i + 1)) gaps++;
    const texts = new Map<string, number>();
    for (const m of log) {
      if (texts.has(m.text)) duplicated++;
      texts.set(m.text, m.seq);
    }
    bySeq.set(id, texts);
  }
  let lost = 0;
  let misplaced = 0;
  for (const a of acknowledged) {
    const seq = bySeq.get(a.id)?.get(a.text);
    if (seq === undefined) lost++;
    else if (seq !== a.seq) misplaced++;
  }
  // Acknowledgement order: an append acknowledged before another began has the smaller seq.
  let reordered = 0;
  const ids = new Set(acknowledged.map((a) => a.id));
  for (const id of ids) {
    const mine = acknowledged.filter((a) => a.id === id);
    for (const x of mine) for (const y of mine) if (x.end < y.start && x.seq! >= y.seq!) reordered++;
  }
  // No read returned a message that was later lost (or that sat at another seq).
  let phantom = 0;
  for (const r of reads) for (const m of r.messages) if (bySeq.get(r.id)?.get(m.text) !== m.seq) phantom++;
  const present = [...bySeq.values()].reduce((s, m) => s + m.size, 0);
  return { acknowledged: acknowledged.length, lost, duplicated, misplaced, reordered, phantom, gaps, indeterminate: attempts.length - acknowledged.length, present };
}

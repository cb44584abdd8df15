import { parseArgs } from 'node:util';
import { CommitTimeoutsMax, LeaderTimeoutsMax, runSeed, type SeedResult } from './run.js';

const usage = `usage: fastpaca sim [--seeds N] [--start S] [--steps M] [--trace]

Runs the deterministic Raft simulator on seeds S, S+1, ..., S+N-1 (default: 100 seeds from 1,
2000 steps each). Prints one line per failing seed, then "seeds: N, violations: V"; exits 1 when
V > 0. Replay a failing seed with: fastpaca sim --seeds 1 --start <seed> --trace
`;

function whole(name: string, v: string | undefined, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be a whole number ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** `fastpaca sim`: returns the exit code (0 all seeds passed, 1 violations, 2 usage). */
export async function simCommand(args: string[]): Promise<number> {
  let seeds: number;
  let start: number;
  let steps: number;
  let trace: boolean;
  try {
    const { values } = parseArgs({
      args,
      options: { seeds: { type: 'string' }, start: { type: 'string' }, steps: { type: 'string' }, trace: { type: 'boolean', default: false }, help: { type: 'boolean', default: false } },
    });
    if (values.help) {
      process.stdout.write(usage);
      return 0;
    }
    seeds = whole('seeds', values.seeds, 100, 1);
    start = whole('start', values.start, 1, 0);
    steps = whole('steps', values.steps, 2000, 0);
    trace = values.trace ?? false;
  } catch (err) {
    process.stderr.write(`fastpaca sim: ${(err as Error).message}\n${usage}`);
    return 2;
  }
  let violations = 0;
  let leaderWorst = 0;
  let commitWorst = 0;
  const t0 = performance.now();
  for (let seed = start; seed < start + seeds; seed++) {
    const r: SeedResult = runSeed(seed, steps, { traceLines: trace ? 200 : 60 });
    if (r.violations.length > 0) {
      violations++;
      process.stdout.write(`seed ${seed}: ${r.violations[0]}\n`);
      if (trace) process.stdout.write(`${r.traceTail.map((l) => `  ${l}`).join('\n')}\n`);
    } else if (trace) {
      process.stdout.write(`seed ${seed}: ok, digest ${r.traceDigest}, ${JSON.stringify(r.stats)}\n`);
    }
    leaderWorst = Math.max(leaderWorst, (r.leaderTicks ?? 0) / r.electionTicks);
    commitWorst = Math.max(commitWorst, (r.commitTicks ?? 0) / r.electionTicks);
    // Yield now and then so a caller's signals and timers still run during long runs.
    if ((seed - start) % 100 === 99) await new Promise((resolve) => setImmediate(resolve));
  }
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  process.stdout.write(
    `liveness: leader within ${leaderWorst.toFixed(2)} election timeouts (bound ${LeaderTimeoutsMax}), all committed within ${commitWorst.toFixed(2)} (bound ${CommitTimeoutsMax}); ${steps} steps per seed, ${s} s\n`,
  );
  process.stdout.write(`seeds: ${seeds}, violations: ${violations}\n`);
  return violations > 0 ? 1 : 0;
}

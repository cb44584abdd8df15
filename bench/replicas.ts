/**
 * `fastpaca bench replicas`: the write path of one worker with its groups as Raft groups
 * (GroupReplicas over RaftWal: propose, one fdatasync per round, apply) against today's command
 * log (CommandLog: one fdatasync per round, apply), same commands, same round sizes, same thread,
 * both applying into a MemoryView, so the figure isolates what Raft adds per round. Real files
 * and real fdatasync in a temporary directory.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CommandLog } from '../actors/contexts/command-log.js';
import { MemoryView } from '../actors/contexts/memory-view.js';
import { GroupReplicas } from '../actors/contexts/replicas.js';
import { apply } from '../actors/contexts/state-machine.js';
import type { Command } from '../actors/contexts/types.js';
import { Xoshiro128 } from '../actors/raft/random.js';
import { RaftWal } from '../actors/raft/wal-storage.js';
import { groupOf } from '../runtime/hash.js';
import { createLogger } from '../runtime/log.js';

const Groups = 256;
const Contexts = 1_000;
const machine = { defaultTokenizer: 'approx' as const };
/** ~250 characters, as the append benchmark sends. */
const Text = 'The quick brown fox jumps over the lazy dog. '.repeat(6).slice(0, 250);

interface PathResult {
  commandsPerS: number;
  roundUs: number;
}

function commands(n: number, offset: number): Command[] {
  return Array.from({ length: n }, (_, k) => {
    const i = offset + k;
    return { t: 'append', id: `bench-${i % Contexts}`, at: 1_000 + i, messages: [{ role: 'user', parts: [{ type: 'text', text: Text }], metadata: {}, token_count: 63, part_tokens: [63] }], batch: false } as Command;
  });
}

const puts = (): Command[] => Array.from({ length: Contexts }, (_, i) => ({ t: 'put', id: `bench-${i}`, at: 1, fields: { token_budget: 1_000_000_000 }, create: 'context' }) as Command);

function commandLogPath(dir: string, roundSize: number, durationS: number): PathResult {
  const log = CommandLog.open(dir, 0);
  const view = new MemoryView(Groups);
  for (const c of puts()) apply(view, c, machine);
  let n = 0;
  let rounds = 0;
  const t0 = performance.now();
  const until = t0 + durationS * 1000;
  while (performance.now() < until) {
    const batch = commands(roundSize, n);
    log.append(batch);
    for (const c of batch) apply(view, c, machine);
    n += roundSize;
    rounds++;
  }
  const s = (performance.now() - t0) / 1000;
  void log.close();
  return { commandsPerS: n / s, roundUs: (s * 1e6) / rounds };
}

async function replicasPath(dir: string, roundSize: number, durationS: number): Promise<PathResult> {
  const wal = RaftWal.open(dir);
  const view = new MemoryView(Groups);
  for (const c of puts()) apply(view, c, machine);
  const r = new GroupReplicas({
    raftId: 1,
    groups: Array.from({ length: Groups }, (_, g) => g),
    wal,
    view,
    machine,
    appliedOf: () => 0,
    founders: () => [1],
    random: (g) => new Xoshiro128(g + 1),
    log: createLogger('error', {}, () => {}),
    queuedMax: 1_000_000,
  });
  r.campaignAlone();
  r.round();
  let n = 0;
  let rounds = 0;
  const t0 = performance.now();
  const until = t0 + durationS * 1000;
  while (performance.now() < until) {
    const answers = commands(roundSize, n).map((c) => r.propose(groupOf(c.id, Groups), c));
    r.round();
    await Promise.all(answers);
    n += roundSize;
    rounds++;
  }
  const s = (performance.now() - t0) / 1000;
  wal.close();
  return { commandsPerS: n / s, roundUs: (s * 1e6) / rounds };
}

export async function runReplicasBench(json: boolean, durationS = 3): Promise<number> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fastpaca-bench-replicas-'));
  try {
    const rows: Array<{ round: number; log: PathResult; raft: PathResult }> = [];
    for (const round of [25, 250]) {
      const log = commandLogPath(path.join(root, `log-${round}`), round, durationS);
      const raft = await replicasPath(path.join(root, `raft-${round}`), round, durationS);
      rows.push({ round, log, raft });
    }
    process.stdout.write('commands/round   command log (cmd/s, µs/round)   raft groups (cmd/s, µs/round)   ratio\n');
    for (const { round, log, raft } of rows) {
      process.stdout.write(
        `${String(round).padStart(14)}   ${Math.round(log.commandsPerS).toString().padStart(12)} ${Math.round(log.roundUs).toString().padStart(10)}   ${Math.round(raft.commandsPerS).toString().padStart(12)} ${Math.round(raft.roundUs).toString().padStart(10)}   ${(raft.commandsPerS / log.commandsPerS).toFixed(3)}\n`,
      );
    }
    if (json) {
      const main = rows[0]!;
      process.stdout.write(
        `${JSON.stringify({ scenario: 'replicas', ops_per_s: Math.round(main.raft.commandsPerS), baseline_per_s: Math.round(main.log.commandsPerS), ratio: Number((main.raft.commandsPerS / main.log.commandsPerS).toFixed(3)), errors: 0, rounds: rows.map((r) => ({ commands_per_round: r.round, command_log_per_s: Math.round(r.log.commandsPerS), raft_per_s: Math.round(r.raft.commandsPerS) })) })}\n`,
      );
    }
    return 0;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

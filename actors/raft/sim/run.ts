import { ConfChangeOp } from '../conf-change.js';
import { Xoshiro128 } from '../random.js';
import { StateRole, type NodeId } from '../types.js';
import { SimCluster, type SimClusterConfig, type SimNode, type SimRaftOptions } from './cluster.js';
import { Violation } from './invariants.js';
import { PerfectNetwork } from './network.js';

/**
 * The liveness bounds, in election timeouts (electionTicks) after the faults heal (every node
 * restarted, partitions gone, no loss, every node ticking at the same rate): a leader that every
 * live member follows within LeaderTimeoutsMax, and every command the clients still wait for
 * committed, applied on every member and acknowledged within CommitTimeoutsMax. An election
 * takes one to two timeouts; more when votes split, when a node with a stale log keeps
 * campaigning (without pre-vote it forces terms up), or when a lagging node needs a snapshot.
 */
export const LeaderTimeoutsMax = 10;
export const CommitTimeoutsMax = 15;

export interface SimOptions {
  /** Lines of trace kept for a failure report (0: none). */
  traceLines?: number;
  /** Run the liveness phase after the steps (default true). */
  liveness?: boolean;
  /** Overrides the membership chosen from the seed. */
  voters?: number;
  spares?: number;
}

export interface SeedResult {
  seed: number;
  steps: number;
  /** Empty when every invariant held; otherwise the first violation (the run stops there). */
  violations: string[];
  /** The last events before the end (or the violation). */
  traceTail: string[];
  /** A digest of every event: the same seed gives the same digest. */
  traceDigest: string;
  /** Ticks from healing to a settled leader, and to every pending command committed. */
  leaderTicks: number | undefined;
  commitTicks: number | undefined;
  electionTicks: number;
  stats: Record<string, number>;
}

/**
 * Swarm testing: each seed draws its own mix of events, so some runs are election storms, some
 * are write-heavy, some keep writes in flight for long — rare interleavings get likely somewhere.
 */
interface Profile {
  raft: SimRaftOptions & { electionTicks: number };
  voters: number;
  spares: number;
  /** Relative weights of the events. */
  tick: number;
  propose: number;
  crash: number;
  partition: number;
  quality: number;
  conf: number;
  /** Probability that a Ready is finished in the same event it is written in. */
  finishNow: number;
  paddingBytesMax: number;
  crashOnCommit: number;
}

function pick<T>(rng: Xoshiro128, xs: readonly T[]): T {
  return xs[rng.int(xs.length)]!;
}

/** Everything about a run that the seed decides before the first step. */
function profileFor(rng: Xoshiro128, opts: SimOptions): Profile {
  const msgBytesMax = pick(rng, [48, 128, 512, 8192]);
  const electionTicks = pick(rng, [4, 6, 10]);
  const heartbeatTicks = 1 + rng.int(Math.floor(electionTicks / 2));
  const membership = rng.float();
  const voters = opts.voters ?? (membership < 0.45 ? 3 : membership < 0.7 ? 5 : 3);
  const spares = opts.spares ?? (membership >= 0.7 ? 2 : 0);
  return {
    raft: {
      electionTicks,
      heartbeatTicks,
      preVote: rng.float() < 0.8,
      checkQuorum: rng.float() < 0.8,
      msgBytesMax,
      inflightMsgsMax: pick(rng, [1, 2, 4, 16]),
      inflightBytesMax: msgBytesMax * pick(rng, [1, 4, 64]),
      uncommittedBytesMax: pick(rng, [128, 1024, 1 << 20]),
      committedBytesPerReadyMax: pick(rng, [64, 1 << 20]),
      readIndexPendingMax: 16,
      outboxMsgsMax: 256,
    },
    voters,
    spares,
    tick: pick(rng, [15, 30, 60]),
    propose: pick(rng, [3, 6, 12]),
    finishNow: pick(rng, [0, 0.5, 0.9]),
    paddingBytesMax: pick(rng, [8, 64, 256]),
    crashOnCommit: pick(rng, [0, 0, 0.02, 0.1]),
    crash: pick(rng, [0, 0.3, 1, 2]),
    partition: pick(rng, [0, 0.3, 1]),
    quality: pick(rng, [0, 0.3, 1]),
    conf: spares > 0 ? pick(rng, [1, 4]) : 0,
  };
}

const Qualities = [
  PerfectNetwork,
  { dropRate: 0.05, dupRate: 0.02, delayRate: 0.05, reorderRate: 0.2 },
  { dropRate: 0.2, dupRate: 0.05, delayRate: 0.1, reorderRate: 0.5 },
  { dropRate: 0.5, dupRate: 0.1, delayRate: 0.2, reorderRate: 1 },
] as const;

/** Ends a run early with a violation found outside the invariant checker. */
function violation(message: string): never {
  throw new Violation(message);
}

/** Runs one seed: `steps` random events with faults, then (by default) the liveness phase. */
export function runSeed(seed: number, steps: number, opts: SimOptions = {}): SeedResult {
  const rng = new Xoshiro128(seed);
  const profile = profileFor(rng, opts);
  const voters: NodeId[] = Array.from({ length: profile.voters }, (_, i) => i + 1);
  const spares: NodeId[] = Array.from({ length: profile.spares }, (_, i) => profile.voters + i + 1);
  const cfg: SimClusterConfig = { seed, voters, spares, raft: profile.raft, traceLines: opts.traceLines ?? 60, networkQueueMax: 512, paddingBytesMax: profile.paddingBytesMax };
  const c = new SimCluster(cfg);
  c.log(`seed ${seed} voters=[${voters}] spares=[${spares}] ${JSON.stringify(profile)}`);
  const result: SeedResult = { seed, steps, violations: [], traceTail: [], traceDigest: '', leaderTicks: undefined, commitTicks: undefined, electionTicks: profile.raft.electionTicks, stats: {} };
  try {
    chaos(c, rng, profile, steps);
    if (opts.liveness ?? true) liveness(c, result);
  } catch (err) {
    const msg = err instanceof Violation ? err.message : `exception: ${err instanceof Error ? (err.stack ?? err.message).split('\n').slice(0, 4).join(' | ') : String(err)}`;
    result.violations.push(msg);
    c.log(`VIOLATION ${msg}`);
  }
  result.traceTail = c.trace.tail();
  result.traceDigest = c.trace.digest();
  result.stats = {
    ...c.stats,
    committed: c.inv.maxCommitted,
    commandsIssued: c.client.issued,
    commandsAcked: c.client.ackedCount,
    readsServed: c.client.readsServed,
    messagesLost: c.net.dropped,
    events: c.trace.count,
  };
  return result;
}

/** The fault phase: every step is one event, then every invariant is checked. */
function chaos(c: SimCluster, rng: Xoshiro128, p: Profile, steps: number): void {
  const all = [...c.nodes.values()];
  // Event weights; the fault weights come from the seed's profile.
  const weights: Array<[number, () => void]> = [
    [p.tick, () => tickSome(c, rng)],
    [35, () => void c.deliver()],
    [25, () => readySome(c, rng, p.finishNow)],
    [p.propose, () => proposeSome(c, rng)],
    [1.5, () => readSome(c, rng)],
    [0.3, () => transferSome(c, rng)],
    [1, () => compactSome(c, rng)],
    [p.conf, () => confSome(c, rng)],
    [p.crash * 0.4, () => crashSome(c, rng, all)],
    [p.crash > 0 ? 1.5 : 0, () => restartSome(c, rng, all)],
    [p.partition * 0.4, () => partitionSome(c, rng, all)],
    [p.partition > 0 ? 0.6 : 0, () => healNetwork(c)],
    [p.quality * 0.3, () => qualitySome(c, rng)],
  ];
  const total = weights.reduce((s, [w]) => s + w, 0);
  c.crashOnCommit = p.crashOnCommit;
  c.mayCrash = () => mayCrash(c, all);
  for (let step = 0; step < steps; step++) {
    c.now = step;
    let x = rng.float() * total;
    for (const [w, act] of weights) {
      if (x < w) {
        act();
        break;
      }
      x -= w;
    }
    c.afterEvent();
    if (step % 50 === 0) c.client.expire(step - 400);
  }
}

function randomUp(c: SimCluster, rng: Xoshiro128): SimNode | undefined {
  const up = c.upNodes();
  return up.length === 0 ? undefined : pick(rng, up);
}

function tickSome(c: SimCluster, rng: Xoshiro128): void {
  const n = randomUp(c, rng);
  if (n) c.tick(n);
}

function readySome(c: SimCluster, rng: Xoshiro128, finishNow: number): void {
  const n = randomUp(c, rng);
  if (n) c.ready(n, rng.float() < finishNow);
}

function proposeSome(c: SimCluster, rng: Xoshiro128): void {
  // Clients mostly find the leader; sometimes they ask a stale or random node.
  const leader = c.leader();
  const n = leader && rng.float() < 0.8 ? leader : randomUp(c, rng);
  if (n) c.propose(n, 1 + rng.int(4), rng.float() < 0.5);
}

function readSome(c: SimCluster, rng: Xoshiro128): void {
  const leader = c.leader();
  const n = leader && rng.float() < 0.6 ? leader : randomUp(c, rng);
  if (n) c.read(n);
}

function transferSome(c: SimCluster, rng: Xoshiro128): void {
  const leader = c.leader();
  if (!leader?.raw) return;
  const voters = leader.raw.raft.voters.filter((id) => id !== leader.id);
  if (voters.length > 0) c.transfer(leader, pick(rng, voters));
}

function compactSome(c: SimCluster, rng: Xoshiro128): void {
  const n = randomUp(c, rng);
  if (n) c.compact(n, rng.int(6));
}

/** Membership changes the way an operator makes them: add a spare as a learner, promote it
 * once caught up, remove a voter (never below three) or a learner. */
function confSome(c: SimCluster, rng: Xoshiro128): void {
  const leader = c.leader();
  if (!leader?.raw) return;
  const r = leader.raw.raft;
  const members = new Set([...r.voters, ...r.learners]);
  const choices: Array<() => void> = [];
  // A removed node is stopped for good (decommissioned), so an id is never reused.
  const fresh = [...c.nodes.values()].filter((n) => !members.has(n.id) && !n.decommissioned);
  if (fresh.length > 0) choices.push(() => c.confChange(leader, { op: ConfChangeOp.AddLearner, node: pick(rng, fresh).id }));
  if (r.learners.length > 0) {
    // Promotion is refused until the learner has caught up; an operator keeps asking.
    for (let i = 0; i < 4; i++) choices.push(() => c.confChange(leader, { op: ConfChangeOp.AddVoter, node: pick(rng, r.learners) }));
    choices.push(() => c.confChange(leader, { op: ConfChangeOp.Remove, node: pick(rng, r.learners) }));
  }
  if (r.voters.length > 3) choices.push(() => c.confChange(leader, { op: ConfChangeOp.Remove, node: pick(rng, r.voters) }));
  if (choices.length > 0) pick(rng, choices)();
}

function crashSome(c: SimCluster, rng: Xoshiro128, all: SimNode[]): void {
  // Keep at most a minority of the founding voters down at once, so the run makes progress;
  // the checker does not rely on it.
  if (!mayCrash(c, all)) return;
  // Half the time the leader: that is what leaves uncommitted, divergent log tails behind.
  const leader = c.leader();
  const n = leader && rng.float() < 0.5 ? leader : randomUp(c, rng);
  if (n) c.crash(n);
}

function mayCrash(c: SimCluster, all: SimNode[]): boolean {
  const down = all.filter((n) => !n.up && !n.decommissioned).length;
  return down < Math.floor((c.cfg.voters.length - 1) / 2) + 1;
}

function restartSome(c: SimCluster, rng: Xoshiro128, all: SimNode[]): void {
  const down = all.filter((n) => !n.up && !n.decommissioned);
  if (down.length > 0) c.restart(pick(rng, down));
}

function partitionSome(c: SimCluster, rng: Xoshiro128, all: SimNode[]): void {
  const ids = all.map((n) => n.id);
  const leader = c.leader();
  const kind = rng.float();
  if (leader && kind < 0.3) {
    // Isolate the leader: it keeps taking proposals it can never commit.
    for (const id of ids) {
      if (id === leader.id) continue;
      c.net.cut(leader.id, id);
      c.net.cut(id, leader.id);
    }
    c.log(`isolate leader ${leader.id}`);
    return;
  }
  if (kind < 0.55) {
    // One way: a single direction of one link fails.
    const a = pick(rng, ids);
    const b = pick(rng, ids.filter((id) => id !== a));
    c.net.cut(a, b);
    c.log(`cut ${a}→${b}`);
    return;
  }
  // A symmetric split into two sides.
  const side = new Set(ids.filter(() => rng.float() < 0.5));
  for (const a of ids) for (const b of ids) if (side.has(a) !== side.has(b)) c.net.cut(a, b);
  c.log(`partition [${[...side]}] | [${ids.filter((id) => !side.has(id))}]`);
}

function healNetwork(c: SimCluster): void {
  if (c.net.cutCount === 0) return;
  c.net.heal();
  c.log('heal');
}

function qualitySome(c: SimCluster, rng: Xoshiro128): void {
  const q = pick(rng, Qualities);
  c.net.quality = { ...q };
  c.log(`network drop=${q.dropRate} dup=${q.dupRate} delay=${q.delayRate} reorder=${q.reorderRate}`);
}

/**
 * After the faults: heal everything and run in rounds (every node ticks once, then every
 * message is delivered and every Ready handled until the cluster is quiet). A leader must
 * emerge, and every command still pending must commit, within the stated bounds.
 */
function liveness(c: SimCluster, result: SeedResult): void {
  c.net.heal();
  c.net.quality = { ...PerfectNetwork };
  c.net.releaseDelays();
  for (const n of c.nodes.values()) if (!n.up && !n.decommissioned) c.restart(n);
  // The clients stop waiting for answers that may never come, and retry everything.
  c.client.expire(Infinity);
  c.crashOnCommit = 0;
  c.log('liveness: healed');
  c.afterEvent();
  let leaderAt: number | undefined;
  const e = c.cfg.raft.electionTicks ?? 10;
  const leaderTicksMax = LeaderTimeoutsMax * e;
  const commitTicksMax = CommitTimeoutsMax * e;
  for (let tick = 1; tick <= commitTicksMax; tick++) {
    c.now++;
    for (const n of c.upNodes()) {
      c.tick(n);
      c.afterEvent();
    }
    settle(c);
    const leader = settledLeader(c);
    if (leader && leaderAt === undefined) {
      leaderAt = tick;
      c.log(`liveness: leader ${leader.id} after ${tick} ticks`);
    }
    if (leaderAt === undefined && tick >= leaderTicksMax) {
      violation(`liveness: no settled leader ${leaderTicksMax} ticks (${LeaderTimeoutsMax} election timeouts) after healing (${describeRoles(c)})`);
    }
    if (!leader) continue;
    // Retry every command not yet acknowledged, pipelined as fast as the leader takes them
    // (the proposal bound refuses a batch until earlier ones commit).
    for (let batch = 0; batch < 256 && c.client.retry.length > 0; batch++) {
      if (!c.propose(leader, Math.min(8, c.client.retry.length), true)) break;
      settle(c);
    }
    if (done(c, leader)) {
      result.leaderTicks = leaderAt;
      result.commitTicks = tick;
      c.log(`liveness: all committed after ${tick} ticks`);
      const members = membersOf(leader);
      c.inv.checkAcked([...c.nodes.values()].filter((n) => members.has(n.id) && n.sm).map((n) => ({ id: n.id, sm: n.sm! })));
      return;
    }
  }
  const leader = settledLeader(c);
  violation(`liveness: ${c.client.unacked.size} commands not acknowledged ${commitTicksMax} ticks (${CommitTimeoutsMax} election timeouts) after healing (leader ${leader?.id ?? 'none'}; ${describeRoles(c)})`);
}

function membersOf(leader: SimNode): Set<NodeId> {
  const r = leader.raw!.raft;
  return new Set([...r.voters, ...r.learners]);
}

/** Delivers every message and handles every Ready until nothing moves. */
function settle(c: SimCluster): void {
  for (let round = 0; round < 10_000; round++) {
    let moved = false;
    while (c.deliver()) {
      c.afterEvent();
      moved = true;
    }
    for (const n of c.upNodes()) {
      while (c.ready(n, true)) {
        c.afterEvent();
        moved = true;
      }
    }
    if (!moved) return;
  }
  violation('liveness: the cluster never went quiet');
}

/** The leader of the highest term, if every live member agrees on it. */
function settledLeader(c: SimCluster): SimNode | undefined {
  const leader = c.leader();
  if (!leader?.raw) return undefined;
  const term = leader.raw.raft.term;
  for (const id of membersOf(leader)) {
    const n = c.nodes.get(id);
    const r = n?.raw?.raft;
    if (!r) continue;
    if (r.term !== term || r.lead !== leader.id) return undefined;
  }
  return leader;
}

function done(c: SimCluster, leader: SimNode): boolean {
  if (c.client.unacked.size > 0) return false;
  const lr = leader.raw!.raft;
  if (lr.log.committed !== lr.log.lastIndex()) return false;
  for (const id of membersOf(leader)) {
    const n = c.nodes.get(id);
    if (!n?.raw || !n.sm) return false;
    if (n.sm.applied < lr.log.committed) return false;
  }
  return true;
}

function describeRoles(c: SimCluster): string {
  return [...c.nodes.values()]
    .map((n) => {
      const r = n.raw?.raft;
      if (!r) return `${n.id}:${n.decommissioned ? 'removed' : 'down'}`;
      return `${n.id}:${r.role === StateRole.Leader ? 'L' : r.role[0]}${r.term} lead=${r.lead} last=${r.log.lastIndex()} commit=${r.log.committed} applied=${r.log.applied} conf=[${r.voters}]/[${r.learners}]`;
    })
    .join(', ');
}

export interface SeedsResult {
  seeds: number;
  violations: number;
  failures: SeedResult[];
  /** The largest liveness figures seen, in election timeouts, against the stated bounds. */
  leaderTimeoutsMax: number;
  commitTimeoutsMax: number;
}

/** Runs seeds start, start + 1, …; calls onResult after each. */
export function runSeeds(args: { seeds: number; start?: number; steps?: number; opts?: SimOptions; onResult?: (r: SeedResult) => void }): SeedsResult {
  const start = args.start ?? 1;
  const steps = args.steps ?? 2000;
  const out: SeedsResult = { seeds: args.seeds, violations: 0, failures: [], leaderTimeoutsMax: 0, commitTimeoutsMax: 0 };
  for (let i = 0; i < args.seeds; i++) {
    const r = runSeed(start + i, steps, args.opts);
    if (r.violations.length > 0) {
      out.violations++;
      out.failures.push(r);
    }
    out.leaderTimeoutsMax = Math.max(out.leaderTimeoutsMax, (r.leaderTicks ?? 0) / r.electionTicks);
    out.commitTimeoutsMax = Math.max(out.commitTimeoutsMax, (r.commitTicks ?? 0) / r.electionTicks);
    args.onResult?.(r);
  }
  return out;
}

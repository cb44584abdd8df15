import type { NodeId } from './types.js';

export const VoteResult = {
  /** Not decided yet: more answers could still go either way. */
  Pending: 'pending',
  Won: 'won',
  Lost: 'lost',
} as const;
export type VoteResult = (typeof VoteResult)[keyof typeof VoteResult];

/** How many of `n` voters make a majority. An empty set is decided by nobody (see below). */
export function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}

// Scratch for committedIndex, so the leader's hot path (one call per append response) does not
// allocate. Groups hold a handful of voters; it grows if one ever holds more.
let scratch = new Float64Array(8);

/**
 * The largest index that a majority of `voters` have acknowledged, given each voter's
 * acknowledged index (voters with none count as 0). An empty voter set returns +∞ by
 * convention (it places no constraint), which callers must never commit by: the core never runs
 * with an empty voter set as leader.
 */
export function committedIndex(voters: readonly NodeId[], acked: (id: NodeId) => number): number {
  const n = voters.length;
  if (n === 0) return Infinity;
  if (n > scratch.length) scratch = new Float64Array(n * 2);
  for (let i = 0; i < n; i++) scratch[i] = acked(voters[i]!);
  // Insertion sort, descending: n is tiny, and sort() on a subarray would allocate.
  for (let i = 1; i < n; i++) {
    const v = scratch[i]!;
    let j = i - 1;
    while (j >= 0 && scratch[j]! < v) {
      scratch[j + 1] = scratch[j]!;
      j--;
    }
    scratch[j + 1] = v;
  }
  // The majority(n)-th largest acknowledgement is held by at least a majority.
  return scratch[majority(n) - 1]!;
}

/**
 * The outcome of an election among `voters`, given the answers so far (true: granted).
 * Voters that have not answered are pending. An empty voter set wins by convention.
 */
export function voteResult(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  if (voters.length === 0) return VoteResult.Won;
  let granted = 0;
  let missing = 0;
  for (const id of voters) {
    const v = votes.get(id);
    if (v === undefined) missing++;
    else if (v) granted++;
  }
  const q = majority(voters.length);
  if (granted >= q) return VoteResult.Won;
  if (granted + missing >= q) return VoteResult.Pending;
  return VoteResult.Lost;
}

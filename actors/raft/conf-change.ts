import { assert } from '../../runtime/errors.js';
import type { ConfState, NodeId } from './types.js';

/**
 * Single-server membership changes: one node is added or removed per change, so every majority
 * of the old membership overlaps every majority of the new one and no joint consensus is
 * needed. A node joins as a learner (it receives the log but does not vote), and is promoted to
 * voter only once it has caught up, so adding it never stalls commits while it copies the log.
 */
export const ConfChangeOp = {
  AddLearner: 'add_learner',
  /** Promotes a learner; the leader refuses unless the learner has caught up. */
  AddVoter: 'add_voter',
  Remove: 'remove',
} as const;
export type ConfChangeOp = (typeof ConfChangeOp)[keyof typeof ConfChangeOp];

export interface ConfChange {
  readonly op: ConfChangeOp;
  readonly node: NodeId;
}

const OpCodes: Record<ConfChangeOp, number> = { add_learner: 1, add_voter: 2, remove: 3 };
const Ops: readonly ConfChangeOp[] = ['add_learner', 'add_voter', 'remove'];
const EncodedBytes = 9;

/** The entry data of a conf change: op (1 byte), node (float64, big-endian). */
export function encodeConfChange(cc: ConfChange): Uint8Array {
  assert(Number.isSafeInteger(cc.node) && cc.node >= 1, 'conf changes name a positive node id');
  const out = new Uint8Array(EncodedBytes);
  const view = new DataView(out.buffer);
  view.setUint8(0, OpCodes[cc.op]);
  view.setFloat64(1, cc.node);
  return out;
}

/** Decodes a committed conf change entry; a malformed one is a bug (the leader encoded it). */
export function decodeConfChange(data: Uint8Array): ConfChange {
  assert(data.byteLength === EncodedBytes, 'a conf change entry is 9 bytes');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const op = Ops[view.getUint8(0) - 1];
  const node = view.getFloat64(1);
  assert(op !== undefined && Number.isSafeInteger(node) && node >= 1, 'a conf change entry names an op and a node');
  return { op, node };
}

/**
 * The membership after applying cc to conf. Changes that make no sense against conf (adding a
 * voter twice, removing a stranger) leave it unchanged: every replica applies the same entries
 * in the same order, so every replica reaches the same result either way.
 */
export function applyToConf(conf: ConfState, cc: ConfChange): ConfState {
  const isVoter = conf.voters.includes(cc.node);
  const isLearner = conf.learners.includes(cc.node);
  const sorted = (ids: NodeId[]) => ids.sort((a, b) => a - b);
  switch (cc.op) {
    case ConfChangeOp.AddLearner:
      if (isVoter || isLearner) return conf;
      return { voters: conf.voters, learners: sorted([...conf.learners, cc.node]) };
    case ConfChangeOp.AddVoter:
      if (isVoter) return conf;
      return { voters: sorted([...conf.voters, cc.node]), learners: conf.learners.filter((id) => id !== cc.node) };
    case ConfChangeOp.Remove:
      if (isVoter && conf.voters.length === 1) return conf; // a group never loses its last voter
      if (!isVoter && !isLearner) return conf;
      return { voters: conf.voters.filter((id) => id !== cc.node), learners: conf.learners.filter((id) => id !== cc.node) };
  }
}

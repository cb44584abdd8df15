/** The Raft consensus core: pure, synchronous, deterministic. See docs/raft.md. */
export { RaftConfigError, RaftDefaults, validateConfig, type RaftConfig, type RaftConfigInput } from './config.js';
export { ConfChangeOp, applyToConf, decodeConfChange, encodeConfChange, type ConfChange } from './conf-change.js';
export { LmdbStorage } from './lmdb-storage.js';
export { ProgressState } from './progress.js';
export { committedIndex, majority, voteResult, VoteResult } from './quorum.js';
export { Raft, Refusal, type ProposeResult, type RequestResult } from './raft.js';
export { Xoshiro128, type Random } from './random.js';
export { RawNode, type ProgressStatus, type Ready, type Status } from './raw-node.js';
export { MemoryStorage, bootstrapSnapshot, emptySnapshot, type InitialState, type Storage } from './storage.js';
export * from './types.js';

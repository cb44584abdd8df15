import type { Tokenizer } from '../../runtime/config.js';

/** A message part: `type` is required; `text` parts carry `text`; other fields are stored verbatim. */
export interface Part {
  type: string;
  [field: string]: unknown;
}

export type Metadata = Record<string, unknown>;

/** A message as validated at the edge, before token counts are known. */
export interface MessageInput {
  role: string;
  parts: Part[];
  metadata: Metadata;
  /** Client-supplied count, used verbatim. */
  token_count?: number | undefined;
}

/** A message whose token counts were settled before the command was proposed. */
export interface PreparedMessage {
  role: string;
  parts: Part[];
  metadata: Metadata;
  token_count: number;
  /** Estimated tokens per part with the context's tokenizer; lets skip_parts re-count a message. */
  part_tokens: number[];
}

/** A message in the log. `seq` is 1-based and contiguous per id; `inserted_at` is ms since epoch. */
export interface StoredMessage extends PreparedMessage {
  seq: number;
  inserted_at: number;
}

export type Policy =
  | { strategy: 'last_n'; config: { limit: number } }
  | { strategy: 'skip_parts'; config: { skip_kinds: string[]; limit: number } }
  | { strategy: 'manual'; config: Record<string, never> };

export const DefaultPolicy: Policy = { strategy: 'last_n', config: { limit: 400 } };
export const DefaultSkipKinds = ['reasoning', 'tool'] as const;
export const DefaultTriggerRatio = 0.7;
/** A record created through /v1/conversations has no window settings of its own. */
export const ConversationDefaultBudget = 128_000;

/**
 * The LLM window: `summary` messages (the last compaction's replacement, stored apart) followed by
 * the live log range [liveFrom, last_seq], where per-seq overrides record parts removed by
 * skip_parts (an override keeping no part drops the message from the window).
 */
export interface WindowState {
  /** First log seq of the live part; liveFrom <= last_seq + 1. */
  liveFrom: number;
  /** Messages in the window: summary plus live messages not dropped. */
  count: number;
  /** Tokens in the window; equals the sum over its messages. */
  tokens: number;
  summaryCount: number;
  /** Log range the summary replaced; both 0 when there never was a compaction. */
  summaryFromSeq: number;
  summaryToSeq: number;
  needsCompaction: boolean;
  /** skip_parts already applied to live seqs <= through with exactly these kinds. */
  strip: { through: number; kinds: string[] } | null;
}

export interface ContextState {
  id: string;
  status: 'active' | 'tombstoned';
  token_budget: number;
  trigger_ratio: number;
  policy: Policy;
  tokenizer: Tokenizer;
  metadata: Metadata;
  /** +1 per append request and per compaction; never goes back. */
  version: number;
  last_seq: number;
  archived_seq: number;
  created_at: number;
  updated_at: number;
  window: WindowState;
  /** Idempotency keys are numbered in arrival order so the oldest can be forgotten. */
  idemNext: number;
  idemOldest: number;
}

/** What the window keeps of a live message; `keep` lists the surviving part indexes. */
export interface Override {
  keep: number[];
  tokens: number;
}

export interface WindowMessage {
  role: string;
  parts: Part[];
  metadata: Metadata;
  token_count: number;
  part_tokens: number[];
}

export interface AppendResult {
  seq: number;
  first_seq: number;
  last_seq: number;
  version: number;
  /** Tokens of the appended messages. */
  token_count: number;
  batch: boolean;
  deduped?: boolean;
}

export interface IdemEntry {
  hash: string;
  at: number;
  n: number;
  result: AppendResult;
}

/** Settings a PUT may name; absent fields are left as they are. */
export interface ContextFields {
  token_budget?: number;
  trigger_ratio?: number;
  policy?: Policy;
  tokenizer?: Tokenizer;
  metadata?: Metadata;
  tombstone?: boolean;
}

/**
 * Commands: every write, with everything non-deterministic (time, token counts) already chosen.
 * Replicas apply exactly these, in log order.
 */
export type Command =
  | { t: 'put'; id: string; at: number; fields: ContextFields; create: 'context' | 'conversation' }
  | { t: 'append'; id: string; at: number; messages: PreparedMessage[]; batch: boolean; ifVersion?: number | undefined; idem?: { key: string; hash: string } | undefined }
  | { t: 'compact'; id: string; at: number; replacement: PreparedMessage[]; ifVersion?: number | undefined }
  | { t: 'patch'; id: string; at: number; metadata: Metadata }
  | { t: 'tombstone'; id: string; at: number };

export type DomainErrorCode = 'not_found' | 'tombstoned' | 'conflict' | 'idempotency_conflict' | 'invalid';

export interface DomainError {
  code: DomainErrorCode;
  message: string;
  currentVersion?: number;
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; error: DomainError };

export type CommandResult =
  | Outcome<ContextState>
  | Outcome<AppendResult>
  | Outcome<{ version: number }>
  | Outcome<null>;

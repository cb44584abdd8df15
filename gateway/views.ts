import type { ContextState, StoredMessage } from '../actors/contexts/types.js';
import type { RenderedWindowMessage } from '../actors/contexts/window.js';

/** The two façades render the same stored object differently (API.md). */
export type Facade = 'contexts' | 'conversations';

const iso = (ms: number) => new Date(ms).toISOString();

export function contextView(c: ContextState) {
  return {
    id: c.id,
    status: c.status,
    token_budget: c.token_budget,
    trigger_ratio: c.trigger_ratio,
    policy: c.policy,
    tokenizer: c.tokenizer,
    version: c.version,
    last_seq: c.last_seq,
    archived_seq: c.archived_seq,
    metadata: c.metadata,
    inserted_at: iso(c.created_at),
    created_at: iso(c.created_at),
    updated_at: iso(c.updated_at),
  };
}

export function conversationView(c: ContextState) {
  return {
    id: c.id,
    version: c.version,
    tombstoned: c.status === 'tombstoned',
    metadata: c.metadata,
    last_seq: c.last_seq,
    archived_seq: c.archived_seq,
    created_at: iso(c.created_at),
    updated_at: iso(c.updated_at),
  };
}

export function recordView(facade: Facade, c: ContextState) {
  return facade === 'contexts' ? contextView(c) : conversationView(c);
}

export function messageView(m: StoredMessage) {
  return { seq: m.seq, role: m.role, parts: m.parts, metadata: m.metadata, token_count: m.token_count, inserted_at: iso(m.inserted_at) };
}

export function windowMessageView(m: RenderedWindowMessage) {
  const view: Record<string, unknown> = { role: m.role, parts: m.parts, metadata: m.metadata, token_count: m.token_count };
  if (m.seq !== undefined) view.seq = m.seq;
  if (m.inserted_at !== undefined) view.inserted_at = iso(m.inserted_at);
  return view;
}

/**
 * The window as a client asks for it. With `budgetTokens`, the oldest messages are left out
 * until it fits (the newest always stays), exactly as the policy's budget rule would.
 */
export function windowView(c: ContextState, messages: RenderedWindowMessage[], budgetTokens?: number) {
  let tokens = c.window.tokens;
  let start = 0;
  if (budgetTokens !== undefined) {
    while (tokens > budgetTokens && messages.length - start > 1) tokens -= messages[start++]!.token_count;
  }
  const kept = messages.slice(start);
  const segments: Array<{ type: 'summary' | 'live'; from_seq: number; to_seq: number }> = [];
  const summaryKept = kept.filter((m) => m.seq === undefined).length;
  if (summaryKept > 0) segments.push({ type: 'summary', from_seq: c.window.summaryFromSeq, to_seq: c.window.summaryToSeq });
  const firstLive = kept.find((m) => m.seq !== undefined);
  if (firstLive?.seq !== undefined) segments.push({ type: 'live', from_seq: firstLive.seq, to_seq: c.last_seq });
  return {
    version: c.version,
    messages: kept.map(windowMessageView),
    token_count: tokens,
    used_tokens: tokens,
    needs_compaction: c.window.needsCompaction,
    metadata: c.metadata,
    segments,
  };
}

import { FastpacaError, assert } from '../../runtime/errors.js';
import type { StateView } from './state-view.js';
import { sum } from './tokens.js';
import {
  ConversationDefaultBudget,
  DefaultPolicy,
  DefaultTriggerRatio,
  type AppendResult,
  type Command,
  type CommandResult,
  type ContextFields,
  type ContextState,
  type DomainError,
  type Outcome,
  type StoredMessage,
} from './types.js';
import { WindowEditor } from './window.js';
import type { Tokenizer } from '../../runtime/config.js';

/** Idempotency keys are kept for the last IdemKeepCount keyed appends or IdemKeepMs, whichever is more. */
export const IdemKeepCount = 10_000;
export const IdemKeepMs = 24 * 60 * 60 * 1000;
/** Old keys forgotten per keyed append: more than one, so forgetting always catches up. */
const IdemEvictPerAppend = 2;

export interface MachineOptions {
  /** Tokenizer of records created without one (FASTPACA_TOKENIZER). */
  defaultTokenizer: Tokenizer;
}

/**
 * The context state machine: `apply(view, command)` is a function of the stored state and the
 * command alone, so every replica that applies the same commands in the same order holds the
 * same state. It decides everything before it writes, so a rejected command changes nothing.
 */
export function apply(view: StateView, cmd: Command, opts: MachineOptions): CommandResult {
  switch (cmd.t) {
    case 'put':
      return put(view, cmd, opts);
    case 'append':
      return append(view, cmd);
    case 'compact':
      return compact(view, cmd);
    case 'patch':
      return patch(view, cmd);
    case 'tombstone':
      return tombstone(view, cmd);
  }
}

/**
 * apply, for a caller that goes on with the next command. A throw is a bug, never bad input: it
 * is reported to `onBug` and the caller of the command gets 500 internal, while the commands
 * after it are applied as usual. The host, the state writer and recovery all apply through
 * here, so a command that trips a bug is treated the same everywhere (and cannot stop recovery).
 */
export function applySafely(view: StateView, cmd: Command, opts: MachineOptions, onBug: (err: unknown, cmd: Command) => void): CommandResult | FastpacaError {
  try {
    return apply(view, cmd, opts);
  } catch (err) {
    onBug(err, cmd);
    return new FastpacaError('internal', 'the write failed on an internal error');
  }
}

function fail(code: DomainError['code'], message: string, currentVersion?: number): { ok: false; error: DomainError } {
  return { ok: false, error: currentVersion === undefined ? { code, message } : { code, message, currentVersion } };
}

function notFound(id: string) {
  return fail('not_found', `no context or conversation with id ${JSON.stringify(id)}`);
}

function tombstoned(id: string) {
  return fail('tombstoned', `${JSON.stringify(id)} is tombstoned and accepts no more writes`);
}

function versionConflict(expected: number, current: number) {
  return fail('conflict', `if_version ${expected} does not match the current version ${current}`, current);
}

export function newContext(id: string, at: number, fields: ContextFields, opts: MachineOptions): ContextState {
  return {
    id,
    status: 'active',
    token_budget: fields.token_budget ?? ConversationDefaultBudget,
    trigger_ratio: fields.trigger_ratio ?? DefaultTriggerRatio,
    policy: fields.policy ?? DefaultPolicy,
    tokenizer: fields.tokenizer ?? opts.defaultTokenizer,
    metadata: fields.metadata ?? {},
    version: 0,
    last_seq: 0,
    archived_seq: 0,
    created_at: at,
    updated_at: at,
    window: { liveFrom: 1, count: 0, tokens: 0, summaryCount: 0, summaryFromSeq: 0, summaryToSeq: 0, needsCompaction: false, strip: null },
    idemNext: 1,
    idemOldest: 1,
  };
}

function put(view: StateView, cmd: Extract<Command, { t: 'put' }>, opts: MachineOptions): Outcome<ContextState> {
  const { fields } = cmd;
  const existing = view.getContext(cmd.id);
  if (!existing) {
    if (cmd.create === 'context' && fields.token_budget === undefined) {
      return fail('invalid', 'token_budget is required to create a context');
    }
    const ctx = newContext(cmd.id, cmd.at, fields, opts);
    if (fields.tombstone) ctx.status = 'tombstoned';
    view.putContext(ctx, true);
    return { ok: true, value: ctx };
  }
  if (existing.status === 'tombstoned') {
    // Tombstoning again is a no-op; anything else would revive it, which PUT never does.
    return fields.tombstone && Object.keys(fields).length === 1 ? { ok: true, value: existing } : tombstoned(cmd.id);
  }
  if (fields.token_budget !== undefined) existing.token_budget = fields.token_budget;
  if (fields.trigger_ratio !== undefined) existing.trigger_ratio = fields.trigger_ratio;
  if (fields.policy !== undefined) existing.policy = fields.policy;
  if (fields.tokenizer !== undefined) existing.tokenizer = fields.tokenizer;
  if (fields.metadata !== undefined) existing.metadata = fields.metadata;
  if (fields.tombstone) existing.status = 'tombstoned';
  existing.updated_at = cmd.at;
  view.putContext(existing);
  return { ok: true, value: existing };
}

function append(view: StateView, cmd: Extract<Command, { t: 'append' }>): Outcome<AppendResult> {
  const ctx = view.getContext(cmd.id);
  if (!ctx) return notFound(cmd.id);
  if (cmd.idem) {
    const seen = view.getIdem(cmd.id, cmd.idem.key);
    if (seen) {
      if (seen.hash !== cmd.idem.hash) {
        return fail('idempotency_conflict', `idempotency key ${JSON.stringify(cmd.idem.key)} was used for a different request`);
      }
      return { ok: true, value: { ...seen.result, deduped: true } };
    }
  }
  if (ctx.status === 'tombstoned') return tombstoned(cmd.id);
  if (cmd.ifVersion !== undefined && cmd.ifVersion !== ctx.version) return versionConflict(cmd.ifVersion, ctx.version);
  assert(cmd.messages.length > 0, 'an append carries at least one message');

  const window = new WindowEditor(view, ctx);
  const firstSeq = ctx.last_seq + 1;
  for (const m of cmd.messages) {
    const stored: StoredMessage = { ...m, seq: ++ctx.last_seq, inserted_at: cmd.at };
    view.putMessage(cmd.id, stored);
    window.add(stored);
  }
  ctx.version += 1;
  window.runPolicy();
  if (window.compacted) ctx.version += 1;
  window.finish();
  ctx.updated_at = cmd.at;

  const result: AppendResult = {
    seq: ctx.last_seq,
    first_seq: firstSeq,
    last_seq: ctx.last_seq,
    version: ctx.version,
    token_count: sum(cmd.messages.map((m) => m.token_count)),
    batch: cmd.batch,
  };
  if (cmd.idem) rememberKey(view, ctx, cmd.idem, cmd.at, result);
  view.putContext(ctx);
  return { ok: true, value: result };
}

function rememberKey(view: StateView, ctx: ContextState, idem: { key: string; hash: string }, at: number, result: AppendResult): void {
  const n = ctx.idemNext++;
  view.putIdem(ctx.id, idem.key, { hash: idem.hash, at, n, result });
  view.putIdemKeyAt(ctx.id, n, idem.key);
  for (let i = 0; i < IdemEvictPerAppend && ctx.idemNext - ctx.idemOldest > IdemKeepCount; i++) {
    const oldest = ctx.idemOldest;
    const key = view.getIdemKeyAt(ctx.id, oldest);
    const entry = key === undefined ? undefined : view.getIdem(ctx.id, key);
    if (entry && entry.n === oldest && at - entry.at < IdemKeepMs) break; // still young: keep it
    if (key !== undefined) {
      if (entry && entry.n === oldest) view.deleteIdem(ctx.id, key);
      view.deleteIdemKeyAt(ctx.id, oldest);
    }
    ctx.idemOldest += 1;
  }
}

function compact(view: StateView, cmd: Extract<Command, { t: 'compact' }>): Outcome<{ version: number }> {
  const ctx = view.getContext(cmd.id);
  if (!ctx) return notFound(cmd.id);
  if (ctx.status === 'tombstoned') return tombstoned(cmd.id);
  if (cmd.ifVersion !== undefined && cmd.ifVersion !== ctx.version) return versionConflict(cmd.ifVersion, ctx.version);
  const window = new WindowEditor(view, ctx);
  window.replace(cmd.replacement);
  window.finish();
  ctx.version += 1;
  ctx.updated_at = cmd.at;
  view.putContext(ctx);
  return { ok: true, value: { version: ctx.version } };
}

function patch(view: StateView, cmd: Extract<Command, { t: 'patch' }>): Outcome<ContextState> {
  const ctx = view.getContext(cmd.id);
  if (!ctx) return notFound(cmd.id);
  if (ctx.status === 'tombstoned') return tombstoned(cmd.id);
  // Object.fromEntries defines own properties, so a key named "__proto__" stays plain data.
  const merged = new Map(Object.entries(ctx.metadata));
  for (const [key, value] of Object.entries(cmd.metadata)) {
    if (value === null) merged.delete(key);
    else merged.set(key, value);
  }
  ctx.metadata = Object.fromEntries(merged);
  ctx.updated_at = cmd.at;
  view.putContext(ctx);
  return { ok: true, value: ctx };
}

function tombstone(view: StateView, cmd: Extract<Command, { t: 'tombstone' }>): Outcome<null> {
  const ctx = view.getContext(cmd.id);
  if (!ctx || ctx.status === 'tombstoned') return { ok: true, value: null };
  ctx.status = 'tombstoned';
  ctx.updated_at = cmd.at;
  view.putContext(ctx);
  return { ok: true, value: null };
}

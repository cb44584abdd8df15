import { assert } from '../../runtime/errors.js';
import type { StateView } from './state-view.js';
import { keptTokens, sum } from './tokens.js';
import type { ContextState, Override, StoredMessage, WindowMessage } from './types.js';

/**
 * Operations on one context's LLM window inside a command. The summary is loaded on first use
 * and written back by `finish()` only if it changed, so an append that triggers nothing writes
 * nothing but its message and the record.
 */
export class WindowEditor {
  private summary: WindowMessage[] | undefined;
  private summaryDirty = false;
  /** True once the window lost a message or a part: the change counts as a compaction. */
  compacted = false;

  constructor(
    private readonly view: StateView,
    private readonly ctx: ContextState,
  ) {}

  private get w() {
    return this.ctx.window;
  }

  private loadSummary(): WindowMessage[] {
    this.summary ??= this.w.summaryCount > 0 ? this.view.getSummary(this.ctx.id) : [];
    assert(this.summary.length === this.w.summaryCount, 'summary length matches the record');
    return this.summary;
  }

  add(message: StoredMessage): void {
    this.w.count += 1;
    this.w.tokens += message.token_count;
  }

  /** Runs the policy when the window is over the trigger, then enforces the budget. */
  runPolicy(): void {
    const { policy, token_budget: budget, trigger_ratio: ratio } = this.ctx;
    if (this.w.tokens <= ratio * budget) return;
    switch (policy.strategy) {
      case 'manual':
        this.w.needsCompaction = true;
        return;
      case 'skip_parts':
        this.skipParts(policy.config.skip_kinds);
        this.keepNewest(policy.config.limit);
        break;
      case 'last_n':
        this.keepNewest(policy.config.limit);
        break;
    }
    // The newest message always stays, so a single oversized message may exceed the budget.
    while (this.w.tokens > budget && this.w.count > 1) this.dropOldest();
  }

  /** compact: the replacement becomes the whole window; the log is untouched. */
  replace(replacement: WindowMessage[]): void {
    const { last_seq: lastSeq, id } = this.ctx;
    for (const seq of this.view.overrides(id, this.w.liveFrom, lastSeq).keys()) this.view.deleteOverride(id, seq);
    this.w.summaryFromSeq = this.w.summaryCount > 0 ? this.w.summaryFromSeq : Math.min(this.w.liveFrom, lastSeq);
    this.w.summaryToSeq = lastSeq;
    this.w.liveFrom = lastSeq + 1;
    this.summary = replacement;
    this.summaryDirty = true;
    this.w.summaryCount = replacement.length;
    this.w.count = replacement.length;
    this.w.tokens = sum(replacement.map((m) => m.token_count));
    this.w.needsCompaction = false;
    this.w.strip = null;
  }

  finish(): void {
    if (this.summaryDirty) this.view.putSummary(this.ctx.id, this.summary ?? []);
    assert(this.w.count >= 0 && this.w.tokens >= 0, 'window count and tokens are not negative');
    assert(this.w.liveFrom >= 1 && this.w.liveFrom <= this.ctx.last_seq + 1, 'liveFrom within the log');
  }

  private keepNewest(limit: number): void {
    while (this.w.count > limit) this.dropOldest();
  }

  /** Removes the oldest window message: a summary message first, else the oldest live one. */
  private dropOldest(): void {
    assert(this.w.count > 0, 'dropOldest on an empty window');
    this.compacted = true;
    if (this.w.summaryCount > 0) {
      const summary = this.loadSummary();
      const dropped = summary.shift() as WindowMessage;
      this.summaryDirty = true;
      this.w.summaryCount -= 1;
      this.w.count -= 1;
      this.w.tokens -= dropped.token_count;
      return;
    }
    const { id, last_seq: lastSeq } = this.ctx;
    while (this.w.liveFrom <= lastSeq) {
      const seq = this.w.liveFrom++;
      const override = this.view.getOverride(id, seq);
      if (override) this.view.deleteOverride(id, seq);
      if (override && override.keep.length === 0) continue; // already out of the window
      const tokens = override ? override.tokens : (this.view.getMessage(id, seq)?.token_count ?? 0);
      this.w.count -= 1;
      this.w.tokens -= tokens;
      return;
    }
    assert(false, 'window count says a live message remains but the live range is empty');
  }

  /** skip_parts: drop the parts whose type starts with one of `kinds` from every window message. */
  private skipParts(kinds: string[]): void {
    const skips = (type: string) => kinds.some((k) => type.startsWith(k));
    if (this.w.summaryCount > 0) {
      const kept: WindowMessage[] = [];
      for (const m of this.loadSummary()) {
        const keep = m.parts.flatMap((p, i) => (skips(p.type) ? [] : [i]));
        if (keep.length === m.parts.length) {
          kept.push(m);
          continue;
        }
        this.compacted = true;
        const tokens = keptTokens(m.token_count, m.part_tokens, keep);
        this.w.tokens -= m.token_count;
        if (keep.length === 0) {
          this.w.count -= 1;
          continue;
        }
        this.w.tokens += tokens;
        kept.push({ ...m, parts: keep.map((i) => m.parts[i]!), part_tokens: keep.map((i) => m.part_tokens[i]!), token_count: tokens });
      }
      this.summary = kept;
      this.summaryDirty = true;
      this.w.summaryCount = kept.length;
    }

    const { id, last_seq: lastSeq } = this.ctx;
    const prior = this.w.strip;
    const sameKinds = prior !== null && prior.kinds.length === kinds.length && prior.kinds.every((k, i) => k === kinds[i]);
    const from = sameKinds ? Math.max(this.w.liveFrom, prior.through + 1) : this.w.liveFrom;
    if (from <= lastSeq) {
      const overrides = this.view.overrides(id, from, lastSeq);
      for (const m of this.view.messages(id, from, lastSeq, Number.MAX_SAFE_INTEGER)) {
        const before: Override | undefined = overrides.get(m.seq);
        if (before && before.keep.length === 0) continue;
        const current = before ? before.keep : m.parts.map((_, i) => i);
        const keep = current.filter((i) => !skips(m.parts[i]!.type));
        if (keep.length === current.length) continue;
        this.compacted = true;
        const tokensBefore = before ? before.tokens : m.token_count;
        const tokens = keep.length === 0 ? 0 : keptTokens(m.token_count, m.part_tokens, keep);
        this.view.putOverride(id, m.seq, { keep, tokens });
        this.w.tokens += tokens - tokensBefore;
        if (keep.length === 0) this.w.count -= 1;
      }
    }
    this.w.strip = { through: lastSeq, kinds: [...kinds] };
  }
}

/** A message of the window as clients see it; live messages carry their seq and inserted_at. */
export interface RenderedWindowMessage extends WindowMessage {
  seq?: number;
  inserted_at?: number;
}

/** Reads the window of a context: summary messages, then live messages with overrides applied. */
export function readWindow(view: StateView, ctx: ContextState): RenderedWindowMessage[] {
  const w = ctx.window;
  const out: RenderedWindowMessage[] = w.summaryCount > 0 ? view.getSummary(ctx.id) : [];
  if (w.liveFrom > ctx.last_seq) return out;
  const overrides = view.overrides(ctx.id, w.liveFrom, ctx.last_seq);
  for (const m of view.messages(ctx.id, w.liveFrom, ctx.last_seq, Number.MAX_SAFE_INTEGER)) {
    const o = overrides.get(m.seq);
    if (!o) {
      out.push(m);
      continue;
    }
    if (o.keep.length === 0) continue;
    out.push({ ...m, parts: o.keep.map((i) => m.parts[i]!), part_tokens: o.keep.map((i) => m.part_tokens[i]!), token_count: o.tokens });
  }
  return out;
}

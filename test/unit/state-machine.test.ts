import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { IdemKeepCount, IdemKeepMs } from '../../actors/contexts/state-machine.js';
import { readWindow } from '../../actors/contexts/window.js';
import type { AppendResult, Command, CommandResult, ContextFields, ContextState, Policy, PreparedMessage } from '../../actors/contexts/types.js';
import { machines, prepared, sized, text, type Machine } from '../support/machine.js';

function ok<T>(r: CommandResult): T {
  if (!r.ok) throw new Error(`expected ok, got ${JSON.stringify(r.error)}`);
  return r.value as T;
}

for (const [kind, make] of Object.entries(machines)) {
  describe(`state machine (${kind})`, () => {
    let m: Machine;
    let at = 1_000;
    const open: Machine[] = [];
    const fresh = () => {
      m = make();
      open.push(m);
      return m;
    };
    afterEach(async () => {
      for (const x of open.splice(0)) await x.close();
    });

    const put = (id: string, fields: ContextFields, create: 'context' | 'conversation' = 'context') => m.run({ t: 'put', id, at: ++at, fields, create });
    const append = (id: string, messages: PreparedMessage[], extra: Partial<Extract<Command, { t: 'append' }>> = {}) =>
      m.run({ t: 'append', id, at: ++at, messages, batch: messages.length > 1, ...extra });
    const ctx = (id: string) => m.view.getContext(id) as ContextState;
    const window = (id: string) => readWindow(m.view, ctx(id));
    const policy = (p: Policy) => p;

    it('creates a context with defaults and refuses a context without a budget', () => {
      fresh();
      expect(put('a', {})).toMatchObject({ ok: false, error: { code: 'invalid' } });
      const c = ok<ContextState>(put('a', { token_budget: 100 }));
      expect(c).toMatchObject({ status: 'active', token_budget: 100, trigger_ratio: 0.7, policy: { strategy: 'last_n', config: { limit: 400 } }, version: 0, last_seq: 0 });
      const conv = ok<ContextState>(put('b', { metadata: { x: 1 } }, 'conversation'));
      expect(conv.metadata).toEqual({ x: 1 });
    });

    it('PUT updates only named fields, never changes version, never revives a tombstone', () => {
      fresh();
      put('a', { token_budget: 100, metadata: { k: 1 } });
      append('a', [text('hi')]);
      const c = ok<ContextState>(put('a', { trigger_ratio: 0.5 }));
      expect(c).toMatchObject({ token_budget: 100, trigger_ratio: 0.5, metadata: { k: 1 }, version: 1 });
      expect(m.run({ t: 'tombstone', id: 'a', at: ++at })).toEqual({ ok: true, value: null });
      expect(put('a', { token_budget: 5 })).toMatchObject({ ok: false, error: { code: 'tombstoned' } });
      expect(put('a', { tombstone: true })).toMatchObject({ ok: true });
      expect(ctx('a').status).toBe('tombstoned');
    });

    it('appends get contiguous seqs and +1 version per request, single or batch', () => {
      fresh();
      put('a', { token_budget: 10_000 });
      expect(ok<AppendResult>(append('a', [text('one')]))).toMatchObject({ seq: 1, first_seq: 1, last_seq: 1, version: 1 });
      expect(ok<AppendResult>(append('a', [text('two'), text('three'), text('four')]))).toMatchObject({ seq: 4, first_seq: 2, last_seq: 4, version: 2 });
      expect(m.view.messages('a', 1, 10, 100).map((x) => x.seq)).toEqual([1, 2, 3, 4]);
      expect(ctx('a')).toMatchObject({ last_seq: 4, version: 2 });
    });

    it('refuses appends to unknown and tombstoned ids and on if_version mismatch, changing nothing', () => {
      fresh();
      expect(append('nope', [text('x')])).toMatchObject({ ok: false, error: { code: 'not_found' } });
      put('a', { token_budget: 100 });
      append('a', [text('x')]);
      expect(append('a', [text('y')], { ifVersion: 0 })).toEqual({ ok: false, error: { code: 'conflict', message: expect.stringContaining('current version 1'), currentVersion: 1 } });
      expect(ok<AppendResult>(append('a', [text('y')], { ifVersion: 1 })).version).toBe(2);
      m.run({ t: 'tombstone', id: 'a', at: ++at });
      expect(append('a', [text('z')])).toMatchObject({ ok: false, error: { code: 'tombstoned' } });
      expect(ctx('a')).toMatchObject({ last_seq: 2, version: 2 });
    });

    it('an idempotent retry returns the original result with deduped and appends nothing', () => {
      fresh();
      put('a', { token_budget: 100_000 });
      const first = ok<AppendResult>(append('a', [text('x')], { idem: { key: 'k', hash: 'h1' } }));
      const again = ok<AppendResult>(append('a', [text('x')], { idem: { key: 'k', hash: 'h1' } }));
      expect(again).toEqual({ ...first, deduped: true });
      expect(append('a', [text('other')], { idem: { key: 'k', hash: 'h2' } })).toMatchObject({ ok: false, error: { code: 'idempotency_conflict' } });
      expect(ctx('a')).toMatchObject({ last_seq: 1, version: 1 });
      // A retry after a tombstone still gets its original answer.
      m.run({ t: 'tombstone', id: 'a', at: ++at });
      expect(ok<AppendResult>(append('a', [text('x')], { idem: { key: 'k', hash: 'h1' } })).deduped).toBe(true);
    });

    it('forgets idempotency keys only when both older than 24 h and beyond the last 10,000', () => {
      fresh();
      put('a', { token_budget: 100_000_000 });
      const keyed = (key: string): Command => ({ t: 'append', id: 'a', at: ++at, messages: [sized(1)], batch: false, idem: { key, hash: 'h' } });
      m.runMany(Array.from({ length: IdemKeepCount + 50 }, (_, i) => keyed(`k${i}`)));
      // All young: none forgotten, although there are more than 10,000.
      expect(m.view.getIdem('a', 'k0')).toBeDefined();
      expect(ctx('a').idemOldest).toBe(1);
      at += IdemKeepMs;
      m.runMany(Array.from({ length: 100 }, (_, i) => keyed(`late${i}`)));
      expect(m.view.getIdem('a', 'k0')).toBeUndefined();
      const c = ctx('a');
      expect(c.idemNext - c.idemOldest).toBe(IdemKeepCount);
      expect(m.view.getIdem('a', `k${IdemKeepCount + 49}`)).toBeDefined();
    }, 60_000);

    it('last_n keeps the newest N once the trigger is crossed, bumping version for the compaction', () => {
      fresh();
      put('a', { token_budget: 100, trigger_ratio: 0.5, policy: policy({ strategy: 'last_n', config: { limit: 2 } }) });
      for (let i = 1; i <= 5; i++) append('a', [sized(10, `m${i}`)]);
      // 5 × 10 = 50 tokens is not over 0.5 × 100: nothing ran yet.
      expect(window('a').map((x) => x.seq)).toEqual([1, 2, 3, 4, 5]);
      const r = ok<AppendResult>(append('a', [sized(10, 'm6')]));
      expect(r.version).toBe(7); // 6 appends + 1 compaction
      expect(window('a').map((x) => x.seq)).toEqual([5, 6]);
      expect(ctx('a').window).toMatchObject({ count: 2, tokens: 20 });
      expect(m.view.messages('a', 1, 100, 100)).toHaveLength(6); // the log is untouched
    });

    it('skip_parts keeps the final text, drops reasoning and tool parts, then last_n', () => {
      fresh();
      put('a', { token_budget: 1000, trigger_ratio: 0.1, policy: policy({ strategy: 'skip_parts', config: { skip_kinds: ['reasoning', 'tool'], limit: 10 } }) });
      append('a', [prepared('user', [{ type: 'text', text: 'What is the weather?' }])]);
      append('a', [
        prepared('assistant', [
          { type: 'reasoning', text: 'x'.repeat(200) },
          { type: 'tool_call', name: 'weather', args: { city: 'Oslo' } },
        ]),
      ]);
      append('a', [prepared('tool', [{ type: 'tool_result', result: { temp: 3 } }])]);
      append('a', [prepared('assistant', [{ type: 'reasoning', text: 'y'.repeat(200) }, { type: 'text', text: 'It is 3 degrees in Oslo.' }])]);
      const w = window('a');
      expect(w.map((x) => x.parts.map((p) => p.type))).toEqual([['text'], ['text']]);
      expect(w.map((x) => x.seq)).toEqual([1, 4]);
      expect(w[1]!.parts[0]).toEqual({ type: 'text', text: 'It is 3 degrees in Oslo.' });
      expect(ctx('a').window.tokens).toBe(w.reduce((s, x) => s + x.token_count, 0));
      // The log keeps every part.
      expect(m.view.getMessage('a', 2)!.parts).toHaveLength(2);
    });

    it('manual sets needs_compaction and waits for compact', () => {
      fresh();
      put('a', { token_budget: 30, policy: policy({ strategy: 'manual', config: {} }) });
      for (let i = 0; i < 5; i++) append('a', [sized(10)]);
      expect(ctx('a').window).toMatchObject({ needsCompaction: true, count: 5, tokens: 50 });
      expect(ctx('a').version).toBe(5); // no automatic compaction happened
      const r = ok<{ version: number }>(m.run({ t: 'compact', id: 'a', at: ++at, replacement: [sized(3, 'summary')] }));
      expect(r.version).toBe(6);
      expect(ctx('a').window).toMatchObject({ needsCompaction: false, count: 1, tokens: 3, summaryCount: 1, summaryFromSeq: 1, summaryToSeq: 5, liveFrom: 6 });
      append('a', [sized(2)]);
      expect(window('a').map((x) => x.seq)).toEqual([undefined, 6]);
    });

    it('compact checks if_version and refuses tombstoned and unknown ids', () => {
      fresh();
      expect(m.run({ t: 'compact', id: 'x', at: ++at, replacement: [] })).toMatchObject({ ok: false, error: { code: 'not_found' } });
      put('a', { token_budget: 30 });
      append('a', [sized(1)]);
      expect(m.run({ t: 'compact', id: 'a', at: ++at, replacement: [], ifVersion: 0 })).toMatchObject({ ok: false, error: { code: 'conflict', currentVersion: 1 } });
      m.run({ t: 'tombstone', id: 'a', at: ++at });
      expect(m.run({ t: 'compact', id: 'a', at: ++at, replacement: [] })).toMatchObject({ ok: false, error: { code: 'tombstoned' } });
    });

    it('metadata patch merges at the top level and a null removes a key', () => {
      fresh();
      put('a', { token_budget: 30, metadata: { a: 1, b: { c: 2 } } });
      const c = ok<ContextState>(m.run({ t: 'patch', id: 'a', at: ++at, metadata: { a: null, d: 4, ['__proto__']: { polluted: true } } }));
      expect(c.metadata).toEqual({ b: { c: 2 }, d: 4, ['__proto__']: { polluted: true } });
      expect(Object.getPrototypeOf(c.metadata)).toBe(Object.prototype);
      expect(c.version).toBe(0);
    });

    it('property: the window never exceeds the budget unless one message alone does, and its counters match its messages', () => {
      const policies = fc.oneof(
        fc.record({ strategy: fc.constant('last_n' as const), config: fc.record({ limit: fc.integer({ min: 1, max: 8 }) }) }),
        fc.record({ strategy: fc.constant('skip_parts' as const), config: fc.record({ skip_kinds: fc.constant<string[]>(['reasoning', 'tool']), limit: fc.integer({ min: 1, max: 8 }) }) }),
      );
      const message = fc.record({
        tokens: fc.option(fc.integer({ min: 0, max: 60 }), { nil: undefined }),
        parts: fc.array(fc.constantFrom('text', 'reasoning', 'tool_call', 'tool_result', 'image'), { minLength: 1, maxLength: 3 }),
      });
      const step = fc.oneof(
        { weight: 8, arbitrary: fc.record({ kind: fc.constant('append' as const), messages: fc.array(message, { minLength: 1, maxLength: 3 }) }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('compact' as const), messages: fc.array(message, { maxLength: 3 }) }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('policy' as const), policy: policies }) },
      );
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 120 }), fc.double({ min: 0.05, max: 1, noNaN: true }), policies, fc.array(step, { maxLength: 40 }), (budget, ratio, pol, steps) => {
          const mm = make();
          try {
            let t = 0;
            mm.run({ t: 'put', id: 'p', at: ++t, fields: { token_budget: budget, trigger_ratio: ratio, policy: pol }, create: 'context' });
            const toMessages = (ms: Array<{ tokens?: number | undefined; parts: string[] }>) =>
              ms.map((x) => prepared('user', x.parts.map((type, i) => (type === 'text' ? { type, text: `t${i}`.repeat(i + 1) } : { type, data: 'd'.repeat(i * 9) })), x.tokens));
            let version = 0;
            let lastSeq = 0;
            for (const s of steps) {
              if (s.kind === 'policy') {
                mm.run({ t: 'put', id: 'p', at: ++t, fields: { policy: s.policy }, create: 'context' });
                continue;
              }
              if (s.kind === 'compact') {
                const r = mm.run({ t: 'compact', id: 'p', at: ++t, replacement: toMessages(s.messages) });
                expect(r.ok).toBe(true);
                version += 1;
              } else {
                const r = ok<AppendResult>(mm.run({ t: 'append', id: 'p', at: ++t, messages: toMessages(s.messages), batch: true }));
                expect(r.first_seq).toBe(lastSeq + 1);
                lastSeq = r.last_seq;
                expect([version + 1, version + 2]).toContain(r.version);
                version = r.version;
                const c = mm.view.getContext('p')!;
                if (c.window.tokens > budget) expect(c.window.count).toBe(1);
              }
              const c = mm.view.getContext('p')!;
              const w = readWindow(mm.view, c);
              expect(c.window.count).toBe(w.length);
              expect(c.window.tokens).toBe(w.reduce((a, x) => a + x.token_count, 0));
              expect(c.version).toBe(version);
              expect(c.last_seq).toBe(lastSeq);
              // Live messages are in seq order and never repeat.
              const seqs = w.flatMap((x) => (x.seq === undefined ? [] : [x.seq]));
              expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
              expect(new Set(seqs).size).toBe(seqs.length);
            }
          } finally {
            void mm.close();
          }
        }),
        { numRuns: kind === 'memory' ? 300 : 50 },
      );
    });
  });
}

import fc from 'fast-check';
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base';
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base';
import { afterAll, describe, expect, it } from 'vitest';
import type { PoolTokenCounter as Pool } from '../../actors/tokenizer/pool.js';
import count, { splitForCounting } from '../../actors/tokenizer/worker.js';

describe('exact token counts', () => {
  const word = fc.oneof(fc.constantFrom('hello', 'world,', 'naïve', 'café', '☕', '12345', "don't", '\n', '\t', '  ', 'the', '//'), fc.string({ maxLength: 12 }));

  it('counting in pieces equals counting the whole text, for ordinary text', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(word, { minLength: 1, maxLength: 4000 }), fc.constantFrom(' ', '  ', '\n', ''), async (words, sep) => {
        const text = words.join(sep);
        const [[o], [c]] = [await count({ tokenizer: 'o200k_base', texts: [[text]] }), await count({ tokenizer: 'cl100k_base', texts: [[text]] })];
        expect(o![0]).toBe(o200k(text));
        expect(c![0]).toBe(cl100k(text));
        expect(splitForCounting(text).join('')).toBe(text);
      }),
      { numRuns: 40 },
    );
  });

  it('a pathological single word is counted in bounded time', async () => {
    const started = performance.now();
    const [counts] = await count({ tokenizer: 'o200k_base', texts: [['é'.repeat(300_000)]] });
    const n = counts?.[0];
    expect(n).toBeGreaterThan(0);
    expect(performance.now() - started).toBeLessThan(5_000); // unsplit this takes minutes
  });

  // The pool loads its worker as compiled JavaScript, so this uses the build (npm test builds first).
  const built = '../../dist/actors/tokenizer/pool.js';
  const pool: Promise<Pool> = import(built).then((m: { PoolTokenCounter: new (threads: number) => Pool }) => new m.PoolTokenCounter(1));
  afterAll(async () => (await pool).close());

  it('the piscina pool counts per part, off the calling thread', async () => {
    const counts = await (await pool).countParts('cl100k_base', [[{ type: 'text', text: 'Hello there' }, { type: 'image', url: 'x' }]]);
    expect(counts).toEqual([[cl100k('Hello there'), cl100k(JSON.stringify({ type: 'image', url: 'x' }))]]);
  });
});

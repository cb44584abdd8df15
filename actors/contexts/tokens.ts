import type { Part } from './types.js';

/** The `approx` estimator of API.md: a quarter token per character, at least 1 per part. */
export function approxPartTokens(part: Part): number {
  if (part.type === 'text' && typeof part.text === 'string') return Math.max(1, Math.ceil(part.text.length / 4));
  return Math.max(1, Math.ceil(JSON.stringify(part).length / 4));
}

/** The text a BPE tokenizer counts for a part: the text of a text part, else its JSON. */
export function partText(part: Part): string {
  return part.type === 'text' && typeof part.text === 'string' ? part.text : JSON.stringify(part);
}

export function sum(values: readonly number[]): number {
  let total = 0;
  for (const v of values) total += v;
  return total;
}

/**
 * Tokens of a message reduced to the parts in `keep`. Counts were estimated per part; when the
 * client supplied the message's count, the kept share of the estimate scales that count.
 */
export function keptTokens(tokenCount: number, partTokens: readonly number[], keep: readonly number[]): number {
  if (keep.length === partTokens.length) return tokenCount;
  const total = sum(partTokens);
  if (total === 0) return 0;
  let kept = 0;
  for (const i of keep) kept += partTokens[i] ?? 0;
  return Math.round((tokenCount * kept) / total);
}

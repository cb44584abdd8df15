import type { Tokenizer } from '../../runtime/config.js';
import { approxPartTokens, sum } from './tokens.js';
import type { Command, MessageInput, Part, PreparedMessage } from './types.js';
import type { WriteRequest } from './requests.js';

/** Counts tokens of parts with an exact tokenizer, off the calling thread. */
export interface TokenCounter {
  countParts(tokenizer: Exclude<Tokenizer, 'approx'>, parts: Part[][]): Promise<number[][]>;
}

export interface PrepareDeps {
  /** The tokenizer of an existing context, as far as the caller knows now. */
  tokenizerOf: (id: string) => Tokenizer | undefined;
  counter: TokenCounter;
  defaultTokenizer: Tokenizer;
  /** Milliseconds since epoch, never going backwards. */
  now: () => number;
}

function prepared(m: MessageInput, partTokens: number[]): PreparedMessage {
  return { role: m.role, parts: m.parts, metadata: m.metadata, token_count: m.token_count ?? sum(partTokens), part_tokens: partTokens };
}

/**
 * Settles what apply must not compute: the timestamp and the token counts, with the tokenizer
 * of the context as it is now. Approximate counts are computed inline; exact BPE counts come
 * from the pool, so the result is a promise only then.
 */
export function prepare(req: WriteRequest, deps: PrepareDeps): Command | Promise<Command> {
  const at = deps.now();
  switch (req.t) {
    case 'put':
    case 'patch':
    case 'tombstone':
      return { ...req, at };
    case 'append':
    case 'compact': {
      const inputs = req.t === 'append' ? req.messages : req.replacement;
      const tokenizer = deps.tokenizerOf(req.id) ?? deps.defaultTokenizer;
      const build = (counts: number[][]): Command => {
        const messages = inputs.map((m, i) => prepared(m, counts[i]!));
        return req.t === 'append'
          ? { t: 'append', id: req.id, at, messages, batch: req.batch, ifVersion: req.ifVersion, idem: req.idem }
          : { t: 'compact', id: req.id, at, replacement: messages, ifVersion: req.ifVersion };
      };
      if (tokenizer === 'approx') return build(inputs.map((m) => m.parts.map(approxPartTokens)));
      return deps.counter.countParts(tokenizer, inputs.map((m) => m.parts)).then(build);
    }
  }
}

/** A clock that never goes backwards, so inserted_at is monotonic per host. */
export function monotonicClock(source: () => number = Date.now): () => number {
  let last = 0;
  return () => {
    last = Math.max(last, source());
    return last;
  };
}

import { Piscina } from 'piscina';
import { FastpacaError } from '../../runtime/errors.js';
import type { Tokenizer } from '../../runtime/config.js';
import type { TokenCounter } from '../contexts/prepare.js';
import { partText } from '../contexts/tokens.js';
import type { Part } from '../contexts/types.js';
import type { CountTask } from './worker.js';

/** How long one count may take, queueing included, before the write is refused with 503. */
const CountDeadlineMs = 30_000;

/**
 * Exact token counts in a piscina pool. The queue is bounded (past it: 503 overloaded) and
 * every count has a deadline (past it: 503 unavailable), so a stuck or crashed pool thread can
 * never hold a request forever.
 */
export class PoolTokenCounter implements TokenCounter {
  private readonly pool: Piscina<CountTask, number[][]>;

  constructor(
    threads: number,
    private readonly queueMax = 10_000,
  ) {
    this.pool = new Piscina({
      filename: new URL('./worker.js', import.meta.url).href,
      minThreads: 0,
      maxThreads: threads,
      maxQueue: queueMax + 1,
      idleTimeout: 60_000,
    });
  }

  countParts(tokenizer: Exclude<Tokenizer, 'approx'>, parts: Part[][]): Promise<number[][]> {
    const texts = parts.map((ps) => ps.map(partText));
    if (this.pool.queueSize >= this.queueMax) {
      return Promise.reject(new FastpacaError('overloaded', 'too many token counts are waiting; retry shortly', { retryAfterS: 1 }));
    }
    return this.pool.run({ tokenizer, texts }, { signal: AbortSignal.timeout(CountDeadlineMs) }).catch((err: unknown) => {
      throw new FastpacaError('unavailable', `exact token counting did not finish: ${(err as Error)?.message ?? String(err)}`, { retryAfterS: 1 });
    });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

/**
 * Fixed-size log-linear latency histogram in whole microseconds.
 *
 * Values below 1,024 µs get their own bucket; above that every power of two is split into
 * 512 buckets, so any recorded value is off by less than 0.2%. Memory is ~100 KB no matter how
 * long a run lasts, which is the point: a closed-loop driver doing tens of thousands of requests
 * per second would otherwise grow an array without bound.
 */
const SUB_BITS = 9;
const SUB_COUNT = 1 << SUB_BITS; // 512 buckets per octave
const LINEAR_LIMIT = SUB_COUNT * 2; // 1024: exact below this
const LINEAR_EXP = SUB_BITS + 1; // log2(LINEAR_LIMIT)
// 2^31 - 1 µs is ~36 minutes; Math.clz32 needs values that fit in 32 bits.
const MAX_US = 0x7fffffff;
const BUCKETS = LINEAR_LIMIT + (31 - LINEAR_EXP) * SUB_COUNT;

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private total = 0;
  private maxUs = 0;

  get count(): number {
    return this.total;
  }

  /** Records one latency given in nanoseconds (as returned by a hrtime.bigint difference). */
  recordNs(ns: number): void {
    let us = Math.round(ns / 1000);
    if (us > MAX_US) us = MAX_US;
    if (us > this.maxUs) this.maxUs = us;
    this.counts[bucketOf(us)]! += 1;
    this.total += 1;
  }

  /**
   * Latency in ms at quantile q (0..1). Reports the bucket's upper edge (capped at the true
   * maximum) so a percentile is never flattered by the bucketing.
   */
  quantileMs(q: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(upperEdgeUs(i), this.maxUs) / 1000;
    }
    return this.maxUs / 1000;
  }

  maxMs(): number {
    return this.maxUs / 1000;
  }
}

function bucketOf(us: number): number {
  if (us < LINEAR_LIMIT) return us;
  const exp = 31 - Math.clz32(us); // floor(log2(us)), >= LINEAR_EXP here
  const shift = exp - SUB_BITS;
  return LINEAR_LIMIT + (exp - LINEAR_EXP) * SUB_COUNT + ((us >>> shift) - SUB_COUNT);
}

function upperEdgeUs(index: number): number {
  if (index < LINEAR_LIMIT) return index;
  const k = index - LINEAR_LIMIT;
  const exp = Math.floor(k / SUB_COUNT) + LINEAR_EXP;
  const width = 2 ** (exp - SUB_BITS);
  // Plain multiplication: `<<` would overflow int32 in the top octaves.
  return ((k % SUB_COUNT) + SUB_COUNT) * width + width - 1;
}

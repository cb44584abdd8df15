import { assert } from '../../runtime/errors.js';

/**
 * The only source of randomness the core (and the simulator) may use. Injected, so one seed
 * reproduces a whole run; never Math.random.
 */
export interface Random {
  /** A uniformly distributed 32-bit unsigned integer. */
  u32(): number;
  /** A uniformly distributed integer in [0, n); n is a positive whole number ≤ 2^32. */
  int(n: number): number;
  /** A uniformly distributed number in [0, 1). */
  float(): number;
}

/** splitmix32: spreads a seed over the 128-bit xoshiro state so nearby seeds diverge at once. */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * xoshiro128** (Blackman and Vigna): small, fast, and good enough for timeouts and fault
 * schedules. Not for secrets.
 */
export class Xoshiro128 implements Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    assert(Number.isSafeInteger(seed), 'a seed is a whole number');
    // Fold the high bits in too, so seeds above 2^32 are not aliases of smaller ones.
    const st = { s: (seed ^ Math.floor(seed / 2 ** 32)) | 0 };
    this.a = splitmix32(st);
    this.b = splitmix32(st);
    this.c = splitmix32(st);
    this.d = splitmix32(st);
    // The all-zero state is the one fixed point of xoshiro; splitmix cannot produce four zeros,
    // but say so.
    assert((this.a | this.b | this.c | this.d) !== 0, 'xoshiro state is never all zero');
  }

  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  int(n: number): number {
    assert(Number.isInteger(n) && n >= 1 && n <= 2 ** 32, `random range ${n} is a whole number in [1, 2^32]`);
    // Rejection sampling keeps the result uniform for ranges that do not divide 2^32.
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) {
      const x = this.u32();
      if (x < limit) return x % n;
    }
  }

  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** A new generator whose sequence is independent of this one's continuation. */
  fork(): Xoshiro128 {
    return new Xoshiro128(this.u32() * 2 ** 21 + (this.u32() >>> 11));
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * Piscina task: exact BPE token counts. Runs on pool threads only, never on the gateway or a
 * group's thread. Encoders load lazily, once per thread.
 */
import type { Tokenizer } from '../../runtime/config.js';

type Bpe = Exclude<Tokenizer, 'approx'>;
type CountFn = (text: string) => number;

const loaded = new Map<Bpe, Promise<CountFn>>();

function encoder(name: Bpe): Promise<CountFn> {
  let fn = loaded.get(name);
  if (!fn) {
    fn =
      name === 'o200k_base'
        ? import('gpt-tokenizer/encoding/o200k_base').then((m) => m.countTokens as CountFn)
        : import('gpt-tokenizer/encoding/cl100k_base').then((m) => m.countTokens as CountFn);
    loaded.set(name, fn);
  }
  return fn;
}

export interface CountTask {
  tokenizer: Bpe;
  /** One list of texts per message. */
  texts: string[][];
}

/** Texts are counted in pieces of at most this many characters, cut before whitespace. */
const PieceCharsMax = 8192;
/** A run of non-whitespace longer than this is cut where it stands. */
const WordCharsMax = 1000;

/**
 * BPE merging is quadratic in the length of one pre-token: ordinary words are short, but a
 * single 40,000-character "word" takes seconds and would hold the pool for everyone. So texts
 * are counted in pieces that end before whitespace (where the pre-tokenizer splits anyway, so
 * ordinary text counts exactly) and a longer run of non-whitespace is cut every WordCharsMax
 * characters (pathological input then counts approximately, in bounded time).
 */
export function splitForCounting(text: string): string[] {
  if (text.length <= WordCharsMax) return [text];
  const pieces: string[] = [];
  let start = 0;
  while (text.length - start > PieceCharsMax) {
    const window = text.slice(start, start + PieceCharsMax);
    let cut = -1;
    // Cut where a whitespace run begins, so the run stays whole with the word after it.
    for (let i = window.length - 1; i > 0; i--) {
      if (/\s/.test(window[i]!) && !/\s/.test(window[i - 1]!)) {
        cut = i;
        break;
      }
    }
    pieces.push(...cutLongWords(window.slice(0, cut > 0 ? cut : window.length)));
    start += cut > 0 ? cut : window.length;
  }
  pieces.push(...cutLongWords(text.slice(start)));
  return pieces;
}

function cutLongWords(piece: string): string[] {
  if (!new RegExp(`\\S{${WordCharsMax + 1}}`).test(piece)) return [piece];
  const out: string[] = [];
  let current = '';
  for (const token of piece.split(/(\s+)/)) {
    if (token.length <= WordCharsMax) {
      current += token;
      continue;
    }
    for (let i = 0; i < token.length; i += WordCharsMax) {
      if (current !== '') out.push(current);
      current = token.slice(i, i + WordCharsMax);
    }
  }
  if (current !== '') out.push(current);
  return out;
}

export default async function count(task: CountTask): Promise<number[][]> {
  const countTokens = await encoder(task.tokenizer);
  return task.texts.map((texts) =>
    texts.map((t) => {
      let total = 0;
      for (const piece of splitForCounting(t)) total += countTokens(piece);
      return total;
    }),
  );
}

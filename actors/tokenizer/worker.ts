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

export default async function count(task: CountTask): Promise<number[][]> {
  const countTokens = await encoder(task.tokenizer);
  return task.texts.map((texts) => texts.map((t) => countTokens(t)));
}

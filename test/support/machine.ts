import { LmdbStore } from '../../actors/contexts/lmdb-store.js';
import { MemoryView } from '../../actors/contexts/memory-view.js';
import { apply } from '../../actors/contexts/state-machine.js';
import type { StateView } from '../../actors/contexts/state-view.js';
import { approxPartTokens } from '../../actors/contexts/tokens.js';
import type { Command, CommandResult, Part, PreparedMessage } from '../../actors/contexts/types.js';
import { WriteBuffer } from '../../actors/contexts/tables.js';
import { tempDir } from './server.js';

export interface Machine {
  view: StateView;
  run(cmd: Command): CommandResult;
  /** Applies many commands in one write transaction, as one group-commit round would. */
  runMany(cmds: Command[]): CommandResult[];
  close(): Promise<void>;
}

/** The state machine over each StateView implementation, so one suite checks both. */
export const machines: Record<string, () => Machine> = {
  memory: () => {
    const view = new MemoryView();
    const run = (cmd: Command) => apply(view, cmd, { defaultTokenizer: 'approx' });
    return { view, run, runMany: (cmds) => cmds.map(run), close: async () => {} };
  },
  lmdb: () => {
    const store = LmdbStore.open(tempDir('fastpaca-sm-'), 16);
    return {
      view: store.view,
      run: (cmd) => store.root.transactionSync(() => apply(store.view, cmd, { defaultTokenizer: 'approx' })),
      runMany: (cmds) => store.root.transactionSync(() => cmds.map((cmd) => apply(store.view, cmd, { defaultTokenizer: 'approx' }))),
      close: () => store.close(),
    };
  },
  /**
   * As the node runs: writes wait in memory while the store catches up by applying the same
   * commands itself, every third command, so reads merge memory and LMDB.
   */
  'lmdb-buffered': () => {
    const store = LmdbStore.open(tempDir('fastpaca-sm-'), 16);
    const buffer = new WriteBuffer();
    const view = store.bufferedView(buffer);
    let behind: Command[] = [];
    const run = (cmd: Command) => {
      const r = apply(view, cmd, { defaultTokenizer: 'approx' });
      behind.push(cmd);
      if (behind.length === 3) {
        const writes = buffer.take();
        const cmds = behind;
        behind = [];
        store.root.transactionSync(() => cmds.forEach((c) => apply(store.view, c, { defaultTokenizer: 'approx' })));
        store.root.resetReadTxn();
        buffer.release(writes);
      }
      return r;
    };
    return { view, run, runMany: (cmds) => cmds.map(run), close: () => store.close() };
  },
};

export function text(t: string, role = 'user', extra: Part[] = []): PreparedMessage {
  const parts: Part[] = [{ type: 'text', text: t }, ...extra];
  return prepared(role, parts);
}

export function prepared(role: string, parts: Part[], tokenCount?: number): PreparedMessage {
  const partTokens = parts.map(approxPartTokens);
  return { role, parts, metadata: {}, token_count: tokenCount ?? partTokens.reduce((a, b) => a + b, 0), part_tokens: partTokens };
}

/** A message of exactly `tokens` tokens. */
export function sized(tokens: number, label = 'm'): PreparedMessage {
  return prepared('user', [{ type: 'text', text: label }], tokens);
}

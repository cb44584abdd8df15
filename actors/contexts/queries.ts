import type { ReadRequest } from './requests.js';
import type { StateView } from './state-view.js';
import type { ContextState, StoredMessage } from './types.js';
import { readWindow, type RenderedWindowMessage } from './window.js';

export type QueryResult =
  | { q: 'get'; ctx: ContextState | undefined }
  | { q: 'window'; ctx: ContextState | undefined; messages: RenderedWindowMessage[] }
  | { q: 'messages'; ctx: ContextState | undefined; messages: StoredMessage[] }
  | { q: 'list'; contexts: ContextState[] };

/** Answers a read from the state; as deterministic as apply, so any up-to-date replica may answer. */
export function query(view: StateView, r: ReadRequest, owns?: (group: number) => boolean): QueryResult {
  switch (r.q) {
    case 'get':
      return { q: 'get', ctx: view.getContext(r.id) };
    case 'window': {
      const ctx = view.getContext(r.id);
      return { q: 'window', ctx, messages: ctx ? readWindow(view, ctx) : [] };
    }
    case 'tail': {
      const ctx = view.getContext(r.id);
      if (!ctx) return { q: 'messages', ctx, messages: [] };
      const to = ctx.last_seq - r.offset;
      return { q: 'messages', ctx, messages: view.messages(r.id, Math.max(1, to - r.limit + 1), to, r.limit) };
    }
    case 'messages': {
      const ctx = view.getContext(r.id);
      if (!ctx) return { q: 'messages', ctx, messages: [] };
      return { q: 'messages', ctx, messages: view.messages(r.id, r.fromSeq, ctx.last_seq, r.limit) };
    }
    case 'list':
      return { q: 'list', contexts: view.listContexts(r.prefix, r.after, r.limit, owns) };
  }
}

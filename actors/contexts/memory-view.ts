import { groupOf } from '../../runtime/hash.js';
import type { StateView } from './state-view.js';
import type { ContextState, IdemEntry, Override, StoredMessage, WindowMessage } from './types.js';

/** An in-memory StateView for unit tests of the state machine. Values are cloned like a store would. */
export class MemoryView implements StateView {
  private readonly contexts = new Map<string, ContextState>();
  private readonly summaries = new Map<string, WindowMessage[]>();
  private readonly msgs = new Map<string, StoredMessage>();
  private readonly ovs = new Map<string, Override>();
  private readonly idem = new Map<string, IdemEntry>();
  private readonly idemOrder = new Map<string, string>();

  constructor(private readonly groups = 256) {}

  getContext(id: string): ContextState | undefined {
    return clone(this.contexts.get(id));
  }
  putContext(ctx: ContextState): void {
    this.contexts.set(ctx.id, clone(ctx));
  }
  getSummary(id: string): WindowMessage[] {
    return clone(this.summaries.get(id)) ?? [];
  }
  putSummary(id: string, messages: WindowMessage[]): void {
    if (messages.length === 0) this.summaries.delete(id);
    else this.summaries.set(id, clone(messages));
  }
  getMessage(id: string, seq: number): StoredMessage | undefined {
    return clone(this.msgs.get(`${id}\u0000${seq}`));
  }
  putMessage(id: string, message: StoredMessage): void {
    this.msgs.set(`${id}\u0000${message.seq}`, clone(message));
  }
  messages(id: string, fromSeq: number, toSeq: number, limit: number): StoredMessage[] {
    const out: StoredMessage[] = [];
    for (let seq = Math.max(1, fromSeq); seq <= toSeq && out.length < limit; seq++) {
      const m = this.getMessage(id, seq);
      if (m) out.push(m);
    }
    return out;
  }
  getOverride(id: string, seq: number): Override | undefined {
    return clone(this.ovs.get(`${id}\u0000${seq}`));
  }
  putOverride(id: string, seq: number, override: Override): void {
    this.ovs.set(`${id}\u0000${seq}`, clone(override));
  }
  deleteOverride(id: string, seq: number): void {
    this.ovs.delete(`${id}\u0000${seq}`);
  }
  overrides(id: string, fromSeq: number, toSeq: number): Map<number, Override> {
    const out = new Map<number, Override>();
    for (let seq = fromSeq; seq <= toSeq; seq++) {
      const o = this.getOverride(id, seq);
      if (o) out.set(seq, o);
    }
    return out;
  }
  getIdem(id: string, key: string): IdemEntry | undefined {
    return clone(this.idem.get(`${id}\u0000${key}`));
  }
  putIdem(id: string, key: string, entry: IdemEntry): void {
    this.idem.set(`${id}\u0000${key}`, clone(entry));
  }
  deleteIdem(id: string, key: string): void {
    this.idem.delete(`${id}\u0000${key}`);
  }
  getIdemKeyAt(id: string, n: number): string | undefined {
    return this.idemOrder.get(`${id}\u0000${n}`);
  }
  putIdemKeyAt(id: string, n: number, key: string): void {
    this.idemOrder.set(`${id}\u0000${n}`, key);
  }
  deleteIdemKeyAt(id: string, n: number): void {
    this.idemOrder.delete(`${id}\u0000${n}`);
  }
  listContexts(prefix: string, after: string, limit: number, owns?: (group: number) => boolean): ContextState[] {
    return [...this.contexts.keys()]
      .filter((id) => id.startsWith(prefix) && id > after && (owns === undefined || owns(groupOf(id, this.groups))))
      .sort()
      .slice(0, limit)
      .map((id) => clone(this.contexts.get(id)) as ContextState);
  }
}

function clone<T>(value: T): T {
  return value === undefined ? value : structuredClone(value);
}

import type { ContextState, IdemEntry, Override, StoredMessage, WindowMessage } from './types.js';

/**
 * The state the context state machine reads and writes. Inside a write round every read sees
 * the writes of earlier commands of the same round. Implementations: memory (tests) and LMDB.
 */
export interface StateView {
  getContext(id: string): ContextState | undefined;
  /** `created` is true when the record did not exist before (it joins the id listing). */
  putContext(ctx: ContextState, created?: boolean): void;

  getSummary(id: string): WindowMessage[];
  /** An empty list deletes the summary. */
  putSummary(id: string, messages: WindowMessage[]): void;

  getMessage(id: string, seq: number): StoredMessage | undefined;
  putMessage(id: string, message: StoredMessage): void;
  /** Messages with fromSeq <= seq <= toSeq, ascending, at most `limit`. */
  messages(id: string, fromSeq: number, toSeq: number, limit: number): StoredMessage[];

  getOverride(id: string, seq: number): Override | undefined;
  putOverride(id: string, seq: number, override: Override): void;
  deleteOverride(id: string, seq: number): void;
  /** Overrides with fromSeq <= seq <= toSeq. */
  overrides(id: string, fromSeq: number, toSeq: number): Map<number, Override>;

  getIdem(id: string, key: string): IdemEntry | undefined;
  putIdem(id: string, key: string, entry: IdemEntry): void;
  deleteIdem(id: string, key: string): void;
  /** The key of the n-th keyed append of an id, for forgetting keys oldest first. */
  getIdemKeyAt(id: string, n: number): string | undefined;
  putIdemKeyAt(id: string, n: number, key: string): void;
  deleteIdemKeyAt(id: string, n: number): void;

  /**
   * Records in id order with id > after and id starting with prefix; with `owns`, only those
   * of the groups it accepts (a worker thread lists the groups it hosts).
   */
  listContexts(prefix: string, after: string, limit: number, owns?: (group: number) => boolean): ContextState[];
}

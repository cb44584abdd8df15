import { AssertionError, ErrorStatus, FastpacaError, assert, type ErrorCode } from './errors.js';
import { Mailbox, type MailboxCounters, type MailboxRings } from './mailbox.js';

/** On the wire: [kind, correlation, payload]. */
const Request = 0;
const Reply = 1;
const Failure = 2;
type Envelope = [typeof Request | typeof Reply | typeof Failure, number, unknown];

/** A failure as it crosses threads. */
interface WireError {
  code: ErrorCode;
  message: string;
  extra?: Record<string, unknown> | undefined;
  retryAfterS?: number | undefined;
}

/** Deadlines are checked this often; a late answer is at most this much later than its deadline. */
const SweepMs = 100;

export interface RpcOptions {
  /** A call not answered within this is failed with 503 `unavailable`. */
  timeoutMs: number;
  /** Calls awaiting an answer before new ones are refused with 503 `overloaded`. */
  inflightMax: number;
  /** Answers waiting for room in a full ring before the channel is declared broken. */
  outboxMax: number;
  counters?: MailboxCounters | undefined;
}

interface Call {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  deadline: number;
}

/**
 * Request/response over a Mailbox, both ways: each end can call the other and answers the
 * other's calls through `handler`. Calls are correlated by number, bounded in number, and
 * failed at their deadline. A call that finds the ring full fails with 503 `overloaded` at the
 * end of the turn; answers that find it full wait in a bounded outbox.
 */
export class Rpc<CallOut, AnswerIn, CallIn, AnswerOut> {
  readonly mailbox: Mailbox<Envelope, Envelope>;
  private readonly calls = new Map<number, Call>();
  private nextId = 1;
  private readonly outbox: Envelope[] = [];
  private outboxTimer: NodeJS.Timeout | undefined;
  private readonly sweeper: NodeJS.Timeout;
  private closedWith: Error | undefined;

  constructor(
    rings: MailboxRings,
    private readonly handler: (call: CallIn) => AnswerOut | Promise<AnswerOut>,
    postOversize: (record: Uint8Array) => void,
    private readonly opts: RpcOptions,
  ) {
    this.mailbox = new Mailbox<Envelope, Envelope>(rings, (m) => this.receive(m), postOversize, (refused) => this.refused(refused), opts.counters);
    this.sweeper = setInterval(() => this.sweep(), SweepMs);
    this.sweeper.unref();
  }

  start(): void {
    this.mailbox.start();
  }

  /** Calls awaiting an answer. */
  get inflight(): number {
    return this.calls.size;
  }

  /** Calls the other end; the answer comes back through the mailbox, or a 503 at the deadline. */
  call(body: CallOut): Promise<AnswerIn> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.calls.size >= this.opts.inflightMax) return Promise.reject(overloaded());
    const id = this.nextId++;
    const answered = new Promise<AnswerIn>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as (v: unknown) => void, reject, deadline: performance.now() + this.opts.timeoutMs });
    });
    this.mailbox.send([Request, id, body]);
    return answered;
  }

  /** Fails every call in flight and every later one with `err` (the other end is gone). */
  close(err: Error): void {
    this.closedWith ??= err;
    clearInterval(this.sweeper);
    clearTimeout(this.outboxTimer);
    this.outbox.length = 0;
    this.mailbox.stop();
    for (const call of this.calls.values()) call.reject(err);
    this.calls.clear();
  }

  private receive([kind, id, payload]: Envelope): void {
    if (kind === Request) {
      let answer: AnswerOut | Promise<AnswerOut>;
      try {
        answer = this.handler(payload as CallIn);
      } catch (err) {
        this.answer([Failure, id, toWire(err)]);
        return;
      }
      if (answer instanceof Promise) {
        answer.then(
          (value) => this.answer([Reply, id, value]),
          (err: unknown) => this.answer([Failure, id, toWire(err)]),
        );
      } else this.answer([Reply, id, answer]);
      return;
    }
    const call = this.calls.get(id);
    if (call === undefined) return; // answered after its deadline: the caller has moved on
    this.calls.delete(id);
    if (kind === Reply) call.resolve(payload);
    else call.reject(fromWire(payload as WireError));
  }

  private answer(envelope: Envelope): void {
    if (this.closedWith) return;
    if (this.outbox.length === 0) this.mailbox.send(envelope);
    else this.hold([envelope]);
  }

  /**
   * The ring was full at the flush. Calls fail at once with 503 `overloaded` (backpressure
   * reaches the client quickly instead of queueing without bound); answers wait in the outbox,
   * in order, since their callers are waiting for them and read their ring all the time.
   */
  private refused(envelopes: Envelope[]): void {
    const answers: Envelope[] = [];
    for (const envelope of envelopes) {
      if (envelope[0] !== Request) {
        answers.push(envelope);
        continue;
      }
      const call = this.calls.get(envelope[1]);
      if (call === undefined) continue;
      this.calls.delete(envelope[1]);
      call.reject(overloaded());
    }
    if (answers.length > 0) this.hold(answers);
  }

  private hold(answers: Envelope[]): void {
    assert(this.outbox.length + answers.length <= this.opts.outboxMax, 'answers waiting for ring space stay bounded');
    this.outbox.push(...answers);
    this.outboxTimer ??= setTimeout(() => this.flushOutbox(), 1);
  }

  private flushOutbox(): void {
    this.outboxTimer = undefined;
    const waiting = this.outbox.splice(0);
    // Through the mailbox again: what still does not fit comes back through `refused`.
    for (const envelope of waiting) this.mailbox.send(envelope);
    this.mailbox.flush();
  }

  /** Calls are kept in the order they were made, which is their deadlines' order. */
  private sweep(): void {
    const now = performance.now();
    for (const [id, call] of this.calls) {
      if (call.deadline > now) return;
      this.calls.delete(id);
      call.reject(new FastpacaError('unavailable', 'the group did not answer in time; retry', { retryAfterS: 1 }));
    }
  }
}

function overloaded(): FastpacaError {
  return new FastpacaError('overloaded', 'too many requests are waiting for this node; retry shortly', { retryAfterS: 1 });
}

function toWire(err: unknown): WireError {
  if (err instanceof FastpacaError) return { code: err.code, message: err.message, extra: err.extra, retryAfterS: err.retryAfterS };
  // Anything else is a bug on the other side; the gateway answers it as 500 internal.
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return { code: 'internal', message: err instanceof AssertionError ? message : `unexpected error: ${message}` };
}

function fromWire(e: WireError): FastpacaError {
  const code: ErrorCode = e && typeof e.code === 'string' && e.code in ErrorStatus ? e.code : 'internal';
  return new FastpacaError(code, String(e?.message ?? 'unknown error'), { extra: e?.extra, retryAfterS: e?.retryAfterS });
}

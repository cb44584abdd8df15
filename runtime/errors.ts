/**
 * Typed errors with stable codes. The code is part of the wire contract (API.md); the HTTP
 * status travels with it so the gateway never has to guess.
 */
export const ErrorStatus = {
  invalid_json: 400,
  invalid_request: 400,
  invalid_id: 400,
  unauthorized: 401,
  not_found: 404,
  context_not_found: 404,
  conversation_not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  idempotency_conflict: 409,
  context_tombstoned: 409,
  conversation_tombstoned: 410,
  payload_too_large: 413,
  rate_limited: 429,
  internal: 500,
  overloaded: 503,
  unavailable: 503,
} as const;

export type ErrorCode = keyof typeof ErrorStatus;

export class FastpacaError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Extra fields merged into the JSON error body (e.g. `current_version`). */
  readonly extra: Record<string, unknown> | undefined;
  /** Seconds for a Retry-After header, for 429 and 503. */
  readonly retryAfterS: number | undefined;

  constructor(code: ErrorCode, message: string, opts?: { extra?: Record<string, unknown>; retryAfterS?: number }) {
    super(message);
    this.name = 'FastpacaError';
    this.code = code;
    this.status = ErrorStatus[code];
    this.extra = opts?.extra;
    this.retryAfterS = opts?.retryAfterS;
  }

  toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message, ...this.extra };
  }
}

export function invalid(message: string): FastpacaError {
  return new FastpacaError('invalid_request', message);
}

/** An invariant that must hold in production too; failing it is a bug, never bad input. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export class AssertionError extends Error {
  constructor(message: string) {
    super(`invariant violated: ${message}`);
    this.name = 'AssertionError';
  }
}

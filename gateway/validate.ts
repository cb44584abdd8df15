import { createHash } from 'node:crypto';
import { isTokenizer, Tokenizers } from '../runtime/config.js';
import { FastpacaError, invalid } from '../runtime/errors.js';
import { DefaultPolicy, DefaultSkipKinds, type ContextFields, type MessageInput, type Metadata, type Part, type Policy } from '../actors/contexts/types.js';

/** Limits on what one request may carry; each keeps a single request's cost bounded. */
export const Limits = {
  idBytesMax: 256,
  idempotencyKeyMax: 256,
  messagesPerAppendMax: 1000,
  replacementMessagesMax: 10_000,
  partsPerMessageMax: 1000,
  roleCharsMax: 256,
  partTypeCharsMax: 256,
  jsonDepthMax: 64,
  readLimitMax: 1000,
  batchItemsMax: 1000,
  skipKindsMax: 64,
  tokenBudgetMax: 100_000_000,
  policyLimitMax: 1_000_000,
  tokenCountMax: 2 ** 31 - 1,
} as const;

const IdPattern = /^[A-Za-z0-9._~:@!$&'()*+,;=-]+$/;

/** Decodes and checks a path id: 1–256 bytes of URL-safe text after percent-decoding. */
export function parseId(raw: string): string {
  let id: string;
  try {
    id = decodeURIComponent(raw);
  } catch {
    throw new FastpacaError('invalid_id', 'the id is not valid percent-encoded text');
  }
  if (!isValidId(id)) {
    throw new FastpacaError('invalid_id', `ids are 1–${Limits.idBytesMax} bytes of URL-safe characters (letters, digits and -._~:@!$&'()*+,;=), not only dots`);
  }
  return id;
}

/** Dots alone are refused: clients normalise `.` and `..` path segments away. */
export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && Buffer.byteLength(value) <= Limits.idBytesMax && IdPattern.test(value) && !/^\.+$/.test(value);
}

/** Parses a JSON object body. An empty body counts as `{}` only where the route allows it. */
export function parseBody(body: Buffer, emptyOk = false): Record<string, unknown> {
  if (body.length === 0) {
    if (emptyOk) return {};
    throw new FastpacaError('invalid_json', 'the request needs a JSON object body');
  }
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw new FastpacaError('invalid_json', 'the request body is not valid JSON');
  }
  if (!isObject(value)) throw new FastpacaError('invalid_json', 'the request body must be a JSON object');
  checkStorable(value);
  return value;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Refuses what could not be stored and returned exactly: JSON nested deeper than
 * Limits.jsonDepthMax, strings (values or keys) that are not well-formed Unicode (a lone
 * surrogate would come back as U+FFFD), and keys named `__proto__` (msgpack decoders rename
 * them). Iterative, so no input can blow the stack.
 */
function checkStorable(root: unknown): void {
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (typeof value === 'string') {
      if (!value.isWellFormed()) throw invalid('strings must be well-formed Unicode (no lone surrogates)');
      continue;
    }
    if (typeof value !== 'object' || value === null) continue;
    if (depth > Limits.jsonDepthMax) throw invalid(`JSON nested deeper than ${Limits.jsonDepthMax} levels is not accepted`);
    if (Array.isArray(value)) {
      for (const child of value) stack.push([child, depth + 1]);
      continue;
    }
    for (const [key, child] of Object.entries(value)) {
      if (key === '__proto__') throw invalid('object keys named "__proto__" are not accepted');
      if (!key.isWellFormed()) throw invalid('object keys must be well-formed Unicode (no lone surrogates)');
      stack.push([child, depth + 1]);
    }
  }
}

function int(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

function optionalObject(value: unknown, name: string): Metadata | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) throw invalid(`${name} must be a JSON object`);
  return value;
}

export function parseMessage(value: unknown, where: string): MessageInput {
  if (!isObject(value)) throw invalid(`${where} must be an object with role and parts`);
  const { role, parts, metadata, token_count: tokenCount } = value;
  if (typeof role !== 'string' || role.length === 0 || role.length > Limits.roleCharsMax) {
    throw invalid(`${where}.role must be a non-empty string of at most ${Limits.roleCharsMax} characters`);
  }
  if (!Array.isArray(parts) || parts.length === 0 || parts.length > Limits.partsPerMessageMax) {
    throw invalid(`${where}.parts must be a non-empty array of at most ${Limits.partsPerMessageMax} parts`);
  }
  parts.forEach((part: unknown, i) => {
    const at = `${where}.parts[${i}]`;
    if (!isObject(part)) throw invalid(`${at} must be an object with a string type`);
    if (typeof part.type !== 'string' || part.type.length === 0 || part.type.length > Limits.partTypeCharsMax) {
      throw invalid(`${at}.type must be a non-empty string of at most ${Limits.partTypeCharsMax} characters`);
    }
    if (part.type === 'text' && typeof part.text !== 'string') throw invalid(`${at}.text must be a string for a text part`);
  });
  const message: MessageInput = { role, parts: parts as Part[], metadata: optionalObject(metadata, `${where}.metadata`) ?? {} };
  if (tokenCount !== undefined && tokenCount !== null) message.token_count = int(tokenCount, `${where}.token_count`, 0, Limits.tokenCountMax);
  return message;
}

export function parseMessages(value: unknown, name: string, min: number, max: number): MessageInput[] {
  if (!Array.isArray(value) || value.length < min || value.length > max) {
    throw invalid(`${name} must be an array of ${min} to ${max} messages`);
  }
  return value.map((m, i) => parseMessage(m, `${name}[${i}]`));
}

/** An append body: `{message}` or `{messages: [...]}`. */
export function parseAppendBody(body: Record<string, unknown>): { messages: MessageInput[]; batch: boolean } {
  if (body.message !== undefined && body.messages !== undefined) throw invalid('send either message or messages, not both');
  if (body.message !== undefined) return { messages: [parseMessage(body.message, 'message')], batch: false };
  if (body.messages !== undefined) return { messages: parseMessages(body.messages, 'messages', 1, Limits.messagesPerAppendMax), batch: true };
  throw invalid('the body needs a message (or messages) to append');
}

/** if_version from the body, else from the query string. */
export function parseIfVersion(body: Record<string, unknown> | undefined, query: URLSearchParams): number | undefined {
  const fromBody = body?.if_version;
  if (fromBody !== undefined && fromBody !== null) return int(fromBody, 'if_version', 0, Number.MAX_SAFE_INTEGER);
  return queryInt(query, 'if_version', undefined, 0, Number.MAX_SAFE_INTEGER);
}

/** A numeric query parameter: digits only, else 400. */
export function queryInt<D extends number | undefined>(query: URLSearchParams, name: string, fallback: D, min: number, max: number): number | D {
  const raw = query.get(name);
  if (raw === null || raw === '') return fallback;
  if (!/^\d{1,16}$/.test(raw)) throw invalid(`${name} must be a whole number`);
  const value = Number(raw);
  if (value < min || value > max) throw invalid(`${name} must be from ${min} to ${max}`);
  return value;
}

/** The idempotency key from the body or the Idempotency-Key header (they must agree). */
export function parseIdempotencyKey(body: Record<string, unknown>, header: string): string | undefined {
  const fromBody = body.idempotency_key;
  if (fromBody !== undefined && fromBody !== null && typeof fromBody !== 'string') throw invalid('idempotency_key must be a string');
  const key = (typeof fromBody === 'string' ? fromBody : undefined) ?? (header === '' ? undefined : header);
  if (key === undefined) return undefined;
  if (header !== '' && typeof fromBody === 'string' && fromBody !== header) {
    throw invalid('idempotency_key in the body and the Idempotency-Key header differ');
  }
  if (key.length === 0 || key.length > Limits.idempotencyKeyMax || !/^[\x20-\x7e]+$/.test(key)) {
    throw invalid(`idempotency keys are 1–${Limits.idempotencyKeyMax} printable ASCII characters`);
  }
  return key;
}

/** What makes two requests "the same content" for idempotency: the messages as validated. */
export function contentHash(messages: MessageInput[], batch: boolean): string {
  return createHash('sha256').update(JSON.stringify([batch, messages])).digest('base64url');
}

export function parsePolicy(value: unknown): Policy {
  if (!isObject(value) || typeof value.strategy !== 'string') throw invalid('policy must be an object with a strategy: last_n, skip_parts or manual');
  const config = value.config === undefined || value.config === null ? {} : value.config;
  if (!isObject(config)) throw invalid('policy.config must be an object');
  const limit = (fallback: number) => (config.limit === undefined ? fallback : int(config.limit, 'policy.config.limit', 1, Limits.policyLimitMax));
  switch (value.strategy) {
    case 'last_n':
      return { strategy: 'last_n', config: { limit: limit(DefaultPolicy.config.limit as number) } };
    case 'skip_parts': {
      const kinds = config.skip_kinds ?? [...DefaultSkipKinds];
      if (!Array.isArray(kinds) || kinds.length > Limits.skipKindsMax || !kinds.every((k) => typeof k === 'string' && k.length > 0 && k.length <= Limits.partTypeCharsMax)) {
        throw invalid(`policy.config.skip_kinds must be an array of at most ${Limits.skipKindsMax} non-empty strings`);
      }
      return { strategy: 'skip_parts', config: { skip_kinds: kinds as string[], limit: limit(400) } };
    }
    case 'manual':
      return { strategy: 'manual', config: {} };
    default:
      throw invalid('policy.strategy must be last_n, skip_parts or manual');
  }
}

/** PUT /v1/contexts/:id: only the fields named are changed. */
export function parseContextFields(body: Record<string, unknown>): ContextFields {
  const fields: ContextFields = {};
  if (body.token_budget !== undefined) fields.token_budget = int(body.token_budget, 'token_budget', 1, Limits.tokenBudgetMax);
  if (body.trigger_ratio !== undefined) {
    const r = body.trigger_ratio;
    if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0 || r > 1) throw invalid('trigger_ratio must be a number with 0 < r ≤ 1');
    fields.trigger_ratio = r;
  }
  if (body.policy !== undefined) fields.policy = parsePolicy(body.policy);
  const metadata = optionalObject(body.metadata, 'metadata');
  if (metadata !== undefined) fields.metadata = metadata;
  if (body.tokenizer !== undefined) {
    if (!isTokenizer(body.tokenizer)) throw invalid(`tokenizer must be one of ${Tokenizers.join(', ')}`);
    fields.tokenizer = body.tokenizer;
  }
  if (body.status !== undefined) {
    if (body.status !== 'tombstoned') throw invalid('status may only be set to "tombstoned"');
    fields.tombstone = true;
  }
  return fields;
}

/** PATCH metadata: `{"metadata": {...}}`, where a null value removes a key. */
export function parseMetadataPatch(body: Record<string, unknown>): Metadata {
  const metadata = optionalObject(body.metadata, 'metadata');
  if (metadata === undefined) throw invalid('the body needs a metadata object');
  return metadata;
}

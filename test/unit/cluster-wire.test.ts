/**
 * What a peer sends is checked before it reaches the Raft core: well-formed messages of every
 * kind pass, and no mangling of one (fast-check) gets through with a field the core would trip on.
 */
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { expandHeartbeats, normalizeRaftMessage, peerMessageKind, validRaftMessage } from '../../actors/contexts/cluster-wire.js';
import { MessageKind, type Message } from '../../actors/raft/types.js';

const from = 7;
const to = 9;
const base = { from, to, term: 3 };
const entry = (index: number) => ({ term: 2, index, type: 0 as const, data: new Uint8Array([1, 2, 3]) });
const samples: Message[] = [
  { ...base, kind: MessageKind.App, index: 4, logTerm: 2, entries: [entry(5), entry(6)], commit: 4 },
  { ...base, kind: MessageKind.App, index: 4, logTerm: 2, entries: [], commit: 4 },
  { ...base, kind: MessageKind.AppResp, index: 6, reject: false, rejectHint: 0, logTerm: 0 },
  { ...base, kind: MessageKind.Vote, index: 6, logTerm: 2, transfer: false },
  { ...base, kind: MessageKind.PreVote, index: 6, logTerm: 2, transfer: true },
  { ...base, kind: MessageKind.VoteResp, reject: true },
  { ...base, kind: MessageKind.PreVoteResp, reject: false },
  { ...base, kind: MessageKind.Heartbeat, commit: 4, context: undefined },
  { ...base, kind: MessageKind.Heartbeat, commit: 4, context: 'g:1' },
  { ...base, kind: MessageKind.HeartbeatResp, context: undefined },
  { ...base, kind: MessageKind.Snap, meta: { index: 10, term: 2, conf: { voters: [7, 9], learners: [] } }, offset: 0, totalBytes: 3, data: new Uint8Array([1, 2, 3]) },
  { ...base, kind: MessageKind.SnapResp, snapIndex: 10, offset: 3, reject: false },
  { ...base, kind: MessageKind.ReadIndex, context: 'r' },
  { ...base, kind: MessageKind.ReadIndexResp, context: 'r', index: 5 },
  { ...base, kind: MessageKind.TimeoutNow },
];
const packr = new Packr({ useRecords: false });
const overTheWire = (m: unknown) => packr.unpack(packr.pack(m));

describe('peer messages', () => {
  it('every kind of well-formed Raft message passes, also after a msgpack round trip', () => {
    for (const m of samples) {
      expect(validRaftMessage(m, from, to), m.kind).toBe(true);
      const wire = overTheWire(m);
      expect(validRaftMessage(wire, from, to), `${m.kind} over the wire`).toBe(true);
      // msgpack carries `undefined` as nil: the core gets undefined back.
      if (m.kind === MessageKind.Heartbeat || m.kind === MessageKind.HeartbeatResp) expect((normalizeRaftMessage(wire as Message) as { context?: string }).context).toBe(m.context);
    }
  });

  it('a message claiming another sender or receiver is refused', () => {
    for (const m of samples) {
      expect(validRaftMessage(m, from + 1, to)).toBe(false);
      expect(validRaftMessage(m, from, to + 1)).toBe(false);
    }
  });

  it('entries out of sequence, a snapshot chunk past its end, or a huge snapshot are refused', () => {
    const app = samples[0] as Extract<Message, { kind: 'app' }>;
    expect(validRaftMessage({ ...app, entries: [entry(6), entry(5)] }, from, to)).toBe(false);
    expect(validRaftMessage({ ...app, entries: [entry(7)] }, from, to)).toBe(false);
    expect(validRaftMessage({ ...app, entries: [{ ...entry(5), term: 1 }] }, from, to), 'a term below the one before').toBe(false);
    expect(validRaftMessage({ ...app, entries: [{ ...entry(5), term: 4 }] }, from, to), "a term above the sender's").toBe(false);
    expect(validRaftMessage({ ...app, entries: [{ ...entry(5), type: 1 }] }, from, to), 'a membership change that does not decode').toBe(false);
    const snap = samples[10] as Extract<Message, { kind: 'snap' }>;
    expect(validRaftMessage({ ...snap, offset: 2 }, from, to)).toBe(false);
    expect(validRaftMessage({ ...snap, totalBytes: 2 ** 40 }, from, to)).toBe(false);
    expect(validRaftMessage({ ...snap, meta: { ...snap.meta, conf: { voters: [], learners: [] } } }, from, to), 'no voters').toBe(false);
    expect(validRaftMessage({ ...snap, meta: { ...snap.meta, conf: { voters: [9, 7], learners: [] } } }, from, to), 'unsorted').toBe(false);
    expect(validRaftMessage({ ...snap, meta: { ...snap.meta, conf: { voters: [7], learners: [7] } } }, from, to), 'voter and learner').toBe(false);
    expect(validRaftMessage({ ...snap, meta: { ...snap.meta, term: 4 } }, from, to), "a term above the sender's").toBe(false);
  });

  it('no mangled field gets through with a value the core cannot take (fast-check)', () => {
    const junk = fc.oneof(fc.constant(undefined), fc.constant(null), fc.string(), fc.double(), fc.integer({ min: -5, max: -1 }), fc.constant(Number.NaN), fc.object(), fc.array(fc.anything(), { maxLength: 3 }), fc.boolean());
    fc.assert(
      fc.property(fc.constantFrom(...samples), fc.string({ maxLength: 12 }), junk, (m, key, value) => {
        const keys = Object.keys(m);
        const field = keys.includes(key) ? key : keys[key.length % keys.length]!;
        const mangled = { ...m, [field]: value } as Record<string, unknown>;
        if (!validRaftMessage(mangled, from, to)) return;
        // Accepted: then the field still holds a value of the kind the core expects.
        const original = (m as unknown as Record<string, unknown>)[field];
        if (typeof original === 'number') expect(Number.isSafeInteger(value) && (value as number) >= 0).toBe(true);
        else if (typeof original === 'boolean') expect(typeof value).toBe('boolean');
        else if (Array.isArray(original)) expect(Array.isArray(value)).toBe(true);
        else if (typeof original === 'string') {
          // A heartbeat's context is optional; a read's is not.
          if (m.kind === MessageKind.Heartbeat || m.kind === MessageKind.HeartbeatResp) expect(value === undefined || value === null || typeof value === 'string').toBe(true);
          else expect(typeof value).toBe('string');
        }
      }),
      { numRuns: 3_000 },
    );
  });

  it('envelopes: only known kinds with whole-number ids are taken', () => {
    expect(peerMessageKind({ t: 'r', g: 1, m: {} })).toBe('r');
    expect(peerMessageKind({ t: 'w', id: 1, g: 2, ms: 100, req: {} })).toBe('w');
    expect(peerMessageKind({ t: 'a', id: 1, ok: 3 })).toBe('a');
    expect(peerMessageKind({ t: 'f', id: 1, ms: 5 })).toBe('f');
    expect(peerMessageKind({ t: 'x', id: 1, ms: 5, node: 'n2' })).toBe('x');
    expect(peerMessageKind({ t: 'x', id: 1, ms: 5, node: 2 })).toBeUndefined();
    expect(peerMessageKind({ t: 'x', id: 1, ms: 5, node: 'n2', keep: ['abcd'] })).toBe('x');
    expect(peerMessageKind({ t: 'x', id: 1, ms: 5, node: 'n2', keep: [7] })).toBeUndefined();
    expect(peerMessageKind({ t: 'i', id: 1, ms: 5, node: 'n2' })).toBe('i');
    expect(peerMessageKind({ t: 'i', id: 1, ms: 5 })).toBeUndefined();
    fc.assert(
      fc.property(fc.anything(), (v) => {
        const kind = peerMessageKind(v);
        if (kind === undefined) return;
        const o = v as Record<string, unknown>;
        expect(o.t).toBe(kind);
        if (kind !== 'r') expect(Number.isSafeInteger(o.id) && (o.id as number) >= 0).toBe(true);
      }),
      { numRuns: 2_000 },
    );
  });

  it('coalesced heartbeats expand into the Raft messages they stand for; malformed tuples are skipped', () => {
    const out = expandHeartbeats(
      overTheWire({ t: 'h', h: [[3, 5, 40, null], [4, 5, 41, 'g4:1'], [5, -1, 0, null], 'junk'], r: [[6, 5, null], [7, 5, 'x', 'extra']] }),
      from,
      to,
    );
    expect(out).toEqual([
      { group: 3, message: { kind: 'heartbeat', from, to, term: 5, commit: 40, context: undefined } },
      { group: 4, message: { kind: 'heartbeat', from, to, term: 5, commit: 41, context: 'g4:1' } },
      { group: 6, message: { kind: 'heartbeat_resp', from, to, term: 5, context: undefined } },
    ]);
    for (const { message } of out) expect(validRaftMessage(message, from, to)).toBe(true);
    fc.assert(
      fc.property(fc.anything(), fc.anything(), (h, r) => {
        for (const { message } of expandHeartbeats({ t: 'h', h: h as never, r: r as never }, from, to)) expect(validRaftMessage(message, from, to)).toBe(true);
      }),
      { numRuns: 2_000 },
    );
  });
});

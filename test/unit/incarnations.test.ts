/** A node's incarnation and its peers', on disk: what makes a node that lost its data directory known as such. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Incarnations, IncarnationsFile } from '../../runtime/incarnations.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'fastpaca-inc-'));
  dirs.push(d);
  return d;
};

describe('Incarnations', () => {
  it('a directory keeps its incarnation; a new directory has another', () => {
    const dir = tmp();
    const own = Incarnations.open(dir).own;
    expect(Incarnations.open(dir).own).toBe(own);
    expect(Incarnations.open(tmp()).own).not.toBe(own);
  });

  it('records a new peer on disk before admitting it, refuses it with another incarnation, until it is forgotten', () => {
    const dir = tmp();
    const inc = Incarnations.open(dir);
    expect(inc.admit('n0', 'n1', 'aaaa')).toBeUndefined();
    expect(inc.admit('n0', 'n1', 'aaaa')).toBeUndefined();
    // Another node started from this directory (after a crash) remembers n1.
    const again = Incarnations.open(dir);
    expect(again.known('n1')).toBe('aaaa');
    const refusal = again.admit('n0', 'n1', 'bbbb');
    expect(refusal).toContain('came back with a new data directory');
    expect(refusal).toContain('/v1/cluster/nodes/n1/replace');
    expect(again.returned.get('n1')).toBe('bbbb');
    expect(again.admit('n0', 'n1', undefined)).toContain('did not say');
    again.forget('n1');
    expect(Incarnations.open(dir).known('n1')).toBeUndefined();
    expect(again.admit('n0', 'n1', 'bbbb')).toBeUndefined();
    expect(again.returned.has('n1')).toBe(false);
    expect(Incarnations.open(dir).known('n1')).toBe('bbbb');
  });

  it('a peer named like an Object property is a peer like any other', () => {
    const inc = Incarnations.open(tmp());
    expect(inc.known('__proto__')).toBeUndefined();
    expect(inc.admit('n0', 'constructor', 'cccc')).toBeUndefined();
    expect(inc.known('constructor')).toBe('cccc');
  });

  it('a damaged file stops the node instead of forgetting its peers', () => {
    const dir = tmp();
    Incarnations.open(dir);
    fs.writeFileSync(path.join(dir, IncarnationsFile), '{"v":1,"incarnation":');
    expect(() => Incarnations.open(dir)).toThrow(/damaged/);
    fs.writeFileSync(path.join(dir, IncarnationsFile), '{"v":1,"peers":{}}');
    expect(() => Incarnations.open(dir)).toThrow(/damaged/);
  });
});

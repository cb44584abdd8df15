import { assert } from '../../../runtime/errors.js';
import { EntryType, type Entry } from '../types.js';

/** What the simulated state machine records at an index that carries no client command. */
export const NoCommand = 0;
/** ...and at a membership change. */
export const ConfCommand = 0xffffffff;

/** A client command as entry data: its id (uint32, little-endian), then padding. */
export function encodeCommand(id: number, paddingBytes: number): Uint8Array {
  assert(id > 0 && id < ConfCommand, 'command ids are in (0, 2^32 − 1)');
  const out = new Uint8Array(4 + paddingBytes);
  new DataView(out.buffer).setUint32(0, id, true);
  for (let i = 4; i < out.length; i++) out[i] = (id + i) & 0xff;
  return out;
}

/** The command an entry carries, NoCommand or ConfCommand. */
export function commandOf(e: Entry): number {
  if (e.type === EntryType.ConfChange) return ConfCommand;
  if (e.data.byteLength === 0) return NoCommand;
  assert(e.data.byteLength >= 4, 'command entries start with an id');
  return new DataView(e.data.buffer, e.data.byteOffset, e.data.byteLength).getUint32(0, true);
}

/**
 * The simulated application: remembers which command it applied at every index, so any two
 * replicas (and every snapshot) can be compared index by index. Its snapshot is that record.
 */
export class SimStateMachine {
  /** cmds[i] is the command applied at index i + 1. */
  private cmds: number[];

  private constructor(cmds: number[]) {
    this.cmds = cmds;
  }

  static empty(): SimStateMachine {
    return new SimStateMachine([]);
  }

  /** The state a snapshot holds (an empty snapshot is the empty state). */
  static decode(data: Uint8Array, index: number): SimStateMachine {
    if (data.byteLength === 0) {
      // The founding snapshot (index 1, no data) or a joining node's empty one.
      return new SimStateMachine(new Array<number>(index).fill(NoCommand));
    }
    assert(data.byteLength === index * 4, `a snapshot at ${index} records ${index} commands (${data.byteLength} bytes)`);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const cmds = new Array<number>(index);
    for (let i = 0; i < index; i++) cmds[i] = view.getUint32(i * 4, true);
    return new SimStateMachine(cmds);
  }

  get applied(): number {
    return this.cmds.length;
  }

  commandAt(index: number): number | undefined {
    return this.cmds[index - 1];
  }

  apply(index: number, cmd: number): void {
    assert(index === this.cmds.length + 1, `applies in order (${index} after ${this.cmds.length})`);
    this.cmds.push(cmd);
  }

  encode(): Uint8Array {
    const out = new Uint8Array(this.cmds.length * 4);
    const view = new DataView(out.buffer);
    for (let i = 0; i < this.cmds.length; i++) view.setUint32(i * 4, this.cmds[i]!, true);
    return out;
  }
}

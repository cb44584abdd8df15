import { assert } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { GroupHost } from './group-host.js';
import type { QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult } from './types.js';

/**
 * The seam between the gateway and the groups. The gateway addresses the group that owns an id
 * (`groupOf(id)`); where that group runs (this thread, a worker, another node's leader) is the
 * implementation's business.
 */
export interface Groups {
  readonly count: number;
  write(group: number, req: WriteRequest): Promise<CommandResult>;
  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult>;
  /** Listing spans every group. */
  list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult>;
  readiness(): { ready: true } | { ready: false; reason: string };
  close(): Promise<void>;
}

/** Every group of a single node, hosted on this thread by one GroupHost (one fsync per round for all). */
export class LocalGroups implements Groups {
  constructor(
    readonly count: number,
    private readonly host: GroupHost,
  ) {}

  write(group: number, req: WriteRequest): Promise<CommandResult> {
    assert(group === groupOf(req.id, this.count), 'write addressed to the group that owns the id');
    return this.host.submit(req);
  }

  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult> {
    assert(group === groupOf(req.id, this.count), 'read addressed to the group that owns the id');
    return this.host.read(req);
  }

  list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult> {
    return this.host.read(req);
  }

  readiness(): { ready: true } | { ready: false; reason: string } {
    const reason = this.host.unavailableReason;
    return reason === undefined ? { ready: true } : { ready: false, reason };
  }

  close(): Promise<void> {
    return this.host.close();
  }
}

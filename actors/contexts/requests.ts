import type { Command, ContextFields, Metadata, MessageInput } from './types.js';

/**
 * What the gateway sends to the group that owns an id: a write without the things chosen at
 * proposal time (timestamp, token counts), or a read. Plain data, so it can cross threads and
 * nodes unchanged.
 */
export type WriteRequest =
  | { t: 'put'; id: string; fields: ContextFields; create: 'context' | 'conversation' }
  | { t: 'append'; id: string; messages: MessageInput[]; batch: boolean; ifVersion?: number | undefined; idem?: { key: string; hash: string } | undefined }
  | { t: 'compact'; id: string; replacement: MessageInput[]; ifVersion?: number | undefined }
  | { t: 'patch'; id: string; metadata: Metadata }
  | { t: 'tombstone'; id: string };

export type ReadRequest =
  | { q: 'get'; id: string }
  | { q: 'window'; id: string }
  | { q: 'tail'; id: string; offset: number; limit: number }
  | { q: 'messages'; id: string; fromSeq: number; limit: number }
  | { q: 'list'; prefix: string; after: string; limit: number };

export type { Command };

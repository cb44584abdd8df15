/**
 * The state writer thread: follows the command log into the state store (LogApplier) as the
 * host asks, and says how far the store is, committed and on disk. No uWS app runs here.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createLogger } from '../../runtime/log.js';
import { CommandLog } from './command-log.js';
import { LmdbStore } from './lmdb-store.js';
import { LogApplier } from './log-applier.js';
import type { FromStateWriter, StateWriterThreadData } from './state-writer.js';

const port = parentPort!;
const data = workerData as StateWriterThreadData;
const store = LmdbStore.open(data.dataDir, data.groups);
const log = CommandLog.open(data.dataDir, data.log);
const applier = new LogApplier(store, log, data.machine, createLogger(data.logLevel, { node_id: data.nodeId, thread: 'state-writer' }));
const send = (m: FromStateWriter) => port.postMessage(m);

let target = applier.appliedIndex;
let running = false;
let syncing = false;

/** Applies up to the latest target; messages that arrive meanwhile only raise the target. */
function run(): void {
  if (running) return;
  running = true;
  try {
    while (applier.appliedIndex < target) {
      const before = applier.appliedIndex;
      applier.applyUpTo(target);
      if (applier.appliedIndex === before) break; // the rest of the target is not in the log (failed rounds)
      send({ type: 'persisted', index: applier.appliedIndex });
    }
  } catch (err) {
    send({ type: 'failed', message: err instanceof Error ? err.message : String(err) });
    return;
  } finally {
    running = false;
  }
  if (!syncing) {
    syncing = true;
    void applier.durable().then((index) => {
      syncing = false;
      send({ type: 'durable', index });
    });
  }
}

port.on('message', (m: { upTo: number; close?: boolean }) => {
  target = Math.max(target, m.upTo);
  if (!m.close) {
    setImmediate(run); // let messages that are already queued raise the target first
    return;
  }
  run();
  void applier.durable().then(async (index) => {
    await log.close();
    await store.close();
    send({ type: 'closed', index });
  });
});
send({ type: 'ready' });

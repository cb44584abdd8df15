/**
 * Where an actor lives: the node, the worker thread on that node, and the actor's number on
 * that thread (for the context groups, the group number). Plain data, so it crosses threads
 * and nodes as it is.
 */
export interface ActorAddress {
  node: string;
  worker: number;
  actor: number;
}

/** Placement: group g lives on worker g mod W of a node. */
export function workerOf(group: number, workers: number): number {
  return group % workers;
}

/**
 * Three (and four) real node processes on 127.0.0.1 forming a cluster: every group a Raft group
 * of three replicas over the TCP transport.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { groupOf } from '../../runtime/hash.js';
import { TestCluster, assertReplicasIdentical } from '../support/cluster.js';
import { call } from '../support/server.js';

const Groups = 256;
const clusters: TestCluster[] = [];
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.close()));
});

async function start(n: number, env: Record<string, string> = {}, later: number[] = []): Promise<TestCluster> {
  const c = await TestCluster.start(n, { env, later });
  clusters.push(c);
  return c;
}

const text = (t: string) => ({ message: { role: 'user', parts: [{ type: 'text', text: t }] } });

/** Appends until one is acknowledged (a leader change answers 503 for a moment); returns its seq and how long it took. */
async function appendRetrying(url: () => string, id: string, body: unknown, key: string, timeoutMs = 15_000): Promise<{ seq: number; ms: number }> {
  const started = Date.now();
  for (;;) {
    try {
      const r = await call(url(), 'POST', `/v1/contexts/${id}/messages`, body, { 'idempotency-key': key });
      if (r.status === 200 || r.status === 201) return { seq: r.body.seq, ms: Date.now() - started };
      if (r.status !== 503) throw new Error(`append answered ${r.status} ${JSON.stringify(r.body)}`);
    } catch (err) {
      if (!(err instanceof TypeError)) throw err; // fetch failed: the node is going away
    }
    if (Date.now() - started > timeoutMs) throw new Error(`no append acknowledged within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('a cluster of three node processes', () => {
  it('takes writes through any node and serves them through every node; replicas hold the same state', async () => {
    const c = await start(3);
    const ids = Array.from({ length: 12 }, (_, i) => `conv-${i}`);
    for (const [k, id] of ids.entries()) expect((await call(c.url(k % 3), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    for (let round = 0; round < 3; round++) {
      for (const [k, id] of ids.entries()) {
        const r = await call(c.url((k + round) % 3), 'POST', `/v1/contexts/${id}/messages`, text(`${id} #${round}`));
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        expect(r.body.seq).toBe(round + 1);
      }
    }
    for (let i = 0; i < 3; i++) {
      for (const id of ids) {
        const r = await call(c.url(i), 'GET', `/v1/contexts/${id}/messages?from_seq=1`);
        expect(r.status).toBe(200);
        expect(r.body.messages.map((m: { parts: Array<{ text: string }> }) => m.parts[0]!.text)).toEqual([0, 1, 2].map((n) => `${id} #${n}`));
      }
      const listed = await call(c.url(i), 'GET', '/v1/contexts?limit=100');
      expect(listed.status).toBe(200);
      expect(listed.body.contexts.map((x: { id: string }) => x.id).sort()).toEqual([...ids].sort());
    }
    const view = await c.view(0);
    expect(view.nodes.every((n) => n.connected)).toBe(true);
    expect(view.hosted).toBe(Groups);
    expect(view.without_leader).toBe(0);
    await c.converged();
    await c.close();
    expect(await assertReplicasIdentical(c)).toBeGreaterThan(0);
  });

  it('stays writable when the leader of a group is killed (kill -9), and the restarted node catches up', async () => {
    // Here each node's replicas run on its gateway's thread (elsewhere on the cluster worker).
    const c = await start(3, { FASTPACA_WORKERS: '0' });
    const id = 'survivor';
    const g = groupOf(id, Groups);
    expect((await call(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    for (let k = 1; k <= 20; k++) expect((await appendRetrying(() => c.url(0), id, text(`m${k}`), `k${k}`)).seq).toBe(k);
    const leader = (await c.leaderOf(g, 0))!;
    expect(leader).toBeDefined();
    await c.kill(leader);
    const other = [0, 1, 2].find((i) => i !== leader)!;
    // The first write after the kill waits out the election: a few seconds at most.
    const first = await appendRetrying(() => c.url(other), id, text('m21'), 'k21');
    expect(first.seq).toBe(21);
    expect(first.ms).toBeLessThan(8_000);
    for (let k = 22; k <= 40; k++) expect((await appendRetrying(() => c.url(other), id, text(`m${k}`), `k${k}`)).seq).toBe(k);
    await c.startNode(leader);
    await c.converged();
    const r = await call(c.url(leader), 'GET', `/v1/contexts/${id}/messages?from_seq=1&limit=100`);
    expect(r.body.messages.map((m: { seq: number }) => m.seq)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    await c.close();
    expect(await assertReplicasIdentical(c)).toBeGreaterThan(0);
  });

  it('brings a node that missed a compaction up to date with a snapshot of the state store', async () => {
    // Leaders keep no entries for a lagging follower past what their store holds.
    const c = await start(3, { FASTPACA_RAFT_LAG_ENTRIES: '0' });
    const ids = Array.from({ length: 6 }, (_, i) => `snap-${i}`);
    for (const id of ids) expect((await call(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    await c.kill(2);
    for (let k = 1; k <= 30; k++) for (const id of ids) await appendRetrying(() => c.url(k % 2), id, text(`${id} ${k}`), `${id}-${k}`);
    // The survivors compact their logs past what node 2 holds.
    const g = groupOf(ids[0]!, Groups);
    const until = Date.now() + 10_000;
    for (;;) {
      const st = (await c.view(0)).group_status.find((s) => s.group === g)!;
      if (st.first_index > 3) break;
      if (Date.now() > until) throw new Error(`group ${g} was not compacted: ${JSON.stringify(st)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await c.startNode(2, { LOG_LEVEL: 'info' });
    await c.converged();
    // The node's log line travels through a pipe: give it a moment.
    for (let t = 0; t < 50 && !c.nodes[2]!.server!.output().includes('installed a snapshot'); t++) await new Promise((r) => setTimeout(r, 100));
    expect(c.nodes[2]!.server!.output()).toContain('installed a snapshot');
    await c.close();
    expect(await assertReplicasIdentical(c)).toBeGreaterThan(0);
  });

  it('adding a fourth node and removing one moves replicas by Raft membership changes, losing nothing', async () => {
    const c = await start(3);
    const ids = Array.from({ length: 16 }, (_, i) => `member-${i}`);
    let n = 0;
    const writeRound = async () => {
      n++;
      const up = c.members.filter((i) => c.nodes[i]!.server !== undefined);
      for (const [k, id] of ids.entries()) await appendRetrying(() => c.url(up[k % up.length]!), id, text(`${id} #${n}`), `${id}-${n}`);
    };
    for (const id of ids) expect((await call(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    await writeRound();

    /** Waits until every group's voters are its placement over the members (as the leaders see it). */
    const placed = async (timeoutMs = 90_000) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const views = await Promise.all(c.members.filter((i) => c.nodes[i]!.server !== undefined).map((i) => c.view(i)));
        const wrong: string[] = [];
        for (let g = 0; g < Groups; g++) {
          const leaderView = views.map((v) => v.group_status.find((s) => s.group === g && s.role === 'leader')).find((s) => s !== undefined);
          if (!leaderView) {
            wrong.push(`group ${g}: no leader`);
            continue;
          }
          const want = [...leaderView.replicas].sort();
          if (JSON.stringify([...leaderView.voters].sort()) !== JSON.stringify(want) || leaderView.learners.length > 0) wrong.push(`group ${g}: ${leaderView.voters} + ${leaderView.learners}, want ${want}`);
        }
        if (wrong.length === 0) return;
        if (Date.now() > until) throw new Error(`replicas not placed in time: ${wrong.slice(0, 5).join('; ')} (${wrong.length} groups)`);
        await new Promise((r) => setTimeout(r, 250));
      }
    };

    // Grow: every node learns of n3 (a rolling restart with the longer FASTPACA_PEERS), then n3
    // starts, finds the cluster, and joins with empty groups that snapshots fill.
    const added = await c.addNode();
    for (const i of [0, 1, 2]) {
      await c.stop(i);
      await c.startNode(i);
      await writeRound();
    }
    await c.startNode(added, { LOG_LEVEL: 'info' }, 'live');
    await writeRound();
    await placed();
    await c.ready(added);
    expect(c.nodes[added]!.server!.output()).toContain('joining an existing cluster');
    const view = await c.view(added);
    expect(view.group_status.filter((s) => s.voters.includes('n3')).length).toBeGreaterThan(Groups / 8);
    await writeRound();

    // Shrink: n1 goes for good; the others forget it and the coordinator moves its replicas.
    await c.stop(1);
    c.removeNode(1);
    for (const i of [0, 2, 3]) {
      await c.stop(i);
      await c.startNode(i, {}, 'live');
    }
    for (const i of [0, 2, 3]) await c.ready(i);
    await placed();
    await writeRound();

    for (const i of c.members) {
      for (const id of ids) {
        const r = await call(c.url(i), 'GET', `/v1/contexts/${id}/messages?from_seq=1&limit=100`);
        expect(r.body.messages.map((m: { parts: Array<{ text: string }> }) => m.parts[0]!.text)).toEqual(Array.from({ length: n }, (_, k) => `${id} #${k + 1}`));
      }
    }
    await c.converged();
    await c.close();
    expect(await assertReplicasIdentical(c)).toBeGreaterThan(0);
  }, 240_000);

  it('a founder that starts after the others founded founds its groups alike and catches up', async () => {
    const c = await start(3, {}, [2]);
    const id = 'late';
    expect((await call(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    for (let k = 1; k <= 10; k++) expect((await appendRetrying(() => c.url(k % 2), id, text(`m${k}`), `k${k}`)).seq).toBe(k);
    await c.startNode(2, { LOG_LEVEL: 'info' });
    expect(c.nodes[2]!.server!.output()).toContain('founding the groups placed on this node');
    await c.converged();
    const r = await call(c.url(2), 'GET', `/v1/contexts/${id}/messages?from_seq=1`);
    expect(r.body.messages.map((m: { seq: number }) => m.seq)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    await c.close();
    expect(await assertReplicasIdentical(c)).toBe(Groups);
  });

  it('a node that comes back with a wiped data directory is refused (it never votes again as its old self) until it is replaced; then it catches up, losing nothing', async () => {
    // With a cluster secret: the peers also prove it to each other at every handshake.
    const c = await start(3, { FASTPACA_CLUSTER_SECRET: 'a secret shared by this test cluster' });
    const ids = Array.from({ length: 6 }, (_, i) => `wiped-${i}`);
    for (const id of ids) expect((await call(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    for (let k = 1; k <= 10; k++) for (const [j, id] of ids.entries()) await appendRetrying(() => c.url((k + j) % 3), id, text(`${id} ${k}`), `${id}-${k}`);
    await c.kill(2);
    fs.rmSync(c.nodes[2]!.dataDir, { recursive: true, force: true });
    // n1 forgets it ever met n2 (as if n1 had been replaced since): it must learn the old copy from n0.
    await c.stop(1);
    const file = path.join(c.nodes[1]!.dataDir, 'cluster.json');
    const stored = JSON.parse(fs.readFileSync(file, 'utf8')) as { peers: Record<string, string> };
    expect(stored.peers.n2).toBeDefined();
    delete stored.peers.n2;
    fs.writeFileSync(file, JSON.stringify(stored));
    await c.startNode(1);
    // It serves HTTP while refused (live, so that an orchestrator does not restart it; not ready).
    await c.startNode(2, { LOG_LEVEL: 'info' }, 'live');
    const until = Date.now() + 20_000;
    const refusedBoth = async () => {
      for (const i of [0, 1]) if (!(await c.view(i)).nodes.find((n) => n.id === 'n2')?.returned_with) return false;
      return true;
    };
    while (!(await refusedBoth())) {
      if (Date.now() > until) throw new Error(`n0 and n1 did not both refuse the wiped n2: ${c.nodes[2]!.server!.output().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    for (let t = 0; t < 50 && !c.nodes[2]!.server!.output().includes('a peer refused this node'); t++) await new Promise((r) => setTimeout(r, 100));
    expect(c.nodes[2]!.server!.output()).toContain('/v1/cluster/nodes/n2/replace');
    const unready = await call(c.url(2), 'GET', '/health/ready');
    expect(unready.status).toBe(503);
    expect(unready.body.reason).toContain('joining the cluster');
    expect((await call(c.url(2), 'POST', '/v1/contexts/wiped-0/messages', text('refused'))).status).toBe(503);
    // The two others keep every group writable meanwhile.
    for (let k = 11; k <= 15; k++) for (const [j, id] of ids.entries()) await appendRetrying(() => c.url((k + j) % 2), id, text(`${id} ${k}`), `${id}-${k}`);
    expect((await call(c.url(0), 'POST', '/v1/cluster/nodes/nobody/replace')).status).toBe(404);
    const replaced = await call(c.url(1), 'POST', '/v1/cluster/nodes/n2/replace');
    expect(replaced.status, JSON.stringify(replaced.body)).toBe(200);
    expect(replaced.body.removed_from).toBe(Groups);
    // n1 had no record of the old copy (it refused n2 on n0's word): only n0 had one to drop.
    expect(replaced.body.forgotten_by).toEqual(['n0']);
    await c.ready(2);
    // Added back as a learner, filled by snapshots, promoted: a voter of every group again.
    const promoted = Date.now() + 90_000;
    for (;;) {
      const view = await c.view(0);
      if (view.group_status.every((s) => s.voters.includes('n2'))) break;
      if (Date.now() > promoted) throw new Error(`n2 is not a voter of every group again: ${view.group_status.filter((s) => !s.voters.includes('n2')).length} left`);
      await new Promise((r) => setTimeout(r, 200));
    }
    for (const id of ids) {
      const r = await call(c.url(2), 'GET', `/v1/contexts/${id}/messages?from_seq=1&limit=100`);
      expect(r.body.messages.map((m: { parts: Array<{ text: string }> }) => m.parts[0]!.text)).toEqual(Array.from({ length: 15 }, (_, k) => `${id} ${k + 1}`));
    }
    // A node that is connected with the copy the cluster knows is not replaced.
    expect((await call(c.url(0), 'POST', '/v1/cluster/nodes/n2/replace')).status).toBe(409);
    await c.converged();
    await c.close();
    expect(await assertReplicasIdentical(c)).toBe(Groups);
  }, 180_000);

  it("a crashed cluster worker is started again: its node rejoins its groups and serves every write", async () => {
    const c = await start(3, { FASTPACA_TEST_HOOKS: '1', FASTPACA_WORKERS: '1' });
    const id = 'crashing';
    expect((await call(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 10_000 })).status).toBeLessThan(300);
    for (let k = 1; k <= 10; k++) expect((await appendRetrying(() => c.url(0), id, text(`m${k}`), `k${k}`)).seq).toBe(k);
    expect((await call(c.url(0), 'POST', '/v1/_test/workers/0/crash')).status).toBe(202);
    // Through the crashed node: 503 while its worker restarts, then served again.
    for (let k = 11; k <= 20; k++) expect((await appendRetrying(() => c.url(0), id, text(`m${k}`), `k${k}`)).seq).toBe(k);
    await c.ready(0);
    await c.converged();
    const r = await call(c.url(0), 'GET', `/v1/contexts/${id}/messages?from_seq=1&limit=100`);
    expect(r.body.messages.map((m: { seq: number }) => m.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    const metricsText = await (await fetch(`${c.url(0)}/metrics`)).text();
    expect(metricsText).toMatch(/fastpaca_worker_restarts_total 1/);
    await c.close();
    expect(await assertReplicasIdentical(c)).toBe(Groups);
  });
});

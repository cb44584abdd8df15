import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cli } from '../support/server.js';

describe('fastpaca bench', () => {
  it('append runs briefly and ends with one JSON line of figures', () => {
    const run = spawnSync(process.execPath, [cli, 'bench', 'append', '--json', '--duration', '1', '--connections', '4'], { encoding: 'utf8', timeout: 90_000 });
    expect(run.status, run.stderr).toBe(0);
    const last = run.stdout.trim().split('\n').pop()!;
    const figures = JSON.parse(last);
    expect(figures).toMatchObject({ scenario: 'append', errors: 0 });
    // Under the tests' FASTPACA_WORKERS=1 the node runs twice: on one thread, then on a worker.
    for (const k of ['ops_per_s', 'p50_ms', 'p99_ms', 'p999_ms', 'baseline_per_s', 'ratio', 'driver_cpu_pct', 'single_thread_per_s', 'ratio_vs_single_thread']) expect(typeof figures[k]).toBe('number');
    expect(figures.workers).toBe(1);
    expect(figures.ops_per_s).toBeGreaterThan(0);
  });

  it('mailbox compares the ring with postMessage and checks that nothing was lost', () => {
    const run = spawnSync(process.execPath, [cli, 'bench', 'mailbox', '--json'], { encoding: 'utf8', timeout: 90_000 });
    expect(run.status, run.stderr).toBe(0);
    const figures = JSON.parse(run.stdout.trim().split('\n').pop()!);
    expect(figures).toMatchObject({ scenario: 'mailbox', errors: 0 });
    expect(figures.ops_per_s).toBeGreaterThan(0);
    expect(figures.baseline_per_s).toBeGreaterThan(0);
  });

  it('an unknown scenario lists the scenarios and exits 2', () => {
    const run = spawnSync(process.execPath, [cli, 'bench', 'nope'], { encoding: 'utf8', timeout: 30_000 });
    expect(run.status).toBe(2);
    expect(run.stderr).toContain('append');
  });

  it('an unknown option, for any command, is a usage error (exit 2), not a crash', () => {
    for (const args of [['bench', 'append', '--help'], ['cluster', '--nodez', '3']]) {
      const run = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 30_000 });
      expect(run.status, run.stderr).toBe(2);
      expect(run.stderr).toMatch(/Unknown option '--(help|nodez)'/);
      expect(run.stderr).toContain('usage: fastpaca');
      expect(run.stderr).not.toContain('fatal');
    }
  });

  it('--leader-aware without a cluster to route over is a usage error', () => {
    const run = spawnSync(process.execPath, [cli, 'bench', 'append', '--leader-aware'], { encoding: 'utf8', timeout: 30_000 });
    expect(run.status, run.stderr).toBe(2);
    expect(run.stderr).toContain('--leader-aware needs a cluster');
  });
});

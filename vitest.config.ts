import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests start real server processes; two test files at a time fit 2 cores.
    maxWorkers: 2,
    pool: 'forks',
    // The servers the tests start read FASTPACA_WORKERS from the environment: the whole suite
    // runs with the groups on one worker thread, the integration suites again with two, and the
    // API suite with the groups on the gateway's thread (FASTPACA_WORKERS=0).
    projects: [
      { extends: true, test: { name: 'workers-1', include: ['test/**/*.test.ts'], env: { FASTPACA_WORKERS: '1' } } },
      { extends: true, test: { name: 'workers-2', include: ['test/integration/{api,crash,fuzz}.test.ts'], env: { FASTPACA_WORKERS: '2' } } },
      { extends: true, test: { name: 'workers-0', include: ['test/integration/api.test.ts'], env: { FASTPACA_WORKERS: '0' } } },
    ],
  },
});

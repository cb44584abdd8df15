import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** One directory for everything a test run writes, removed as a whole when the run ends. */
export default function setup(): () => void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fastpaca-run-'));
  process.env.FASTPACA_TEST_TMP = dir; // test workers inherit it
  return () => fs.rmSync(dir, { recursive: true, force: true });
}

import fs from 'node:fs';
import path from 'node:path';

/** fsyncs a directory: a file created, renamed or removed in it survives a power cut. */
export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Replaces `file` with `data` atomically and durably: written to a temporary file beside it,
 * fsynced, renamed over it, and the directory fsynced. After a crash the file holds either the
 * old bytes or the new ones, never a mix.
 */
export function writeFileDurably(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  syncDir(path.dirname(file));
}

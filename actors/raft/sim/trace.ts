/**
 * What happened in a run: the last lines (for a failure report) and a digest of every line (to
 * prove two runs of one seed are the same run). Bounded: only the tail is kept.
 */
export class Trace {
  private readonly ring: string[];
  private next = 0;
  /** Lines added so far. */
  count = 0;
  private hash = 0x811c9dc5;

  constructor(readonly linesMax: number) {
    this.ring = new Array<string>(linesMax);
  }

  add(line: string): void {
    let h = this.hash;
    for (let i = 0; i < line.length; i++) h = Math.imul(h ^ line.charCodeAt(i), 0x01000193);
    this.hash = Math.imul(h ^ 0x0a, 0x01000193);
    if (this.linesMax > 0) {
      this.ring[this.next] = line;
      this.next = (this.next + 1) % this.linesMax;
    }
    this.count++;
  }

  tail(): string[] {
    if (this.count < this.linesMax) return this.ring.slice(0, this.count);
    return [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }

  /** FNV-1a of every line, in order. */
  digest(): string {
    return `${(this.hash >>> 0).toString(16).padStart(8, '0')}:${this.count}`;
  }
}

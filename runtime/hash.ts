/**
 * Stable 32-bit FNV-1a over the UTF-8 bytes of a string. Placement depends on it, so it must
 * never change once a cluster has data: id → group is `fnv1a32(id) % groups`.
 */
export function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    let code = text.charCodeAt(i);
    if (code < 0x80) {
      hash = Math.imul(hash ^ code, 0x01000193);
      continue;
    }
    // Hash the UTF-8 encoding so the value does not depend on JavaScript's UTF-16 strings.
    if (code >= 0xd800 && code < 0xdc00 && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1);
      if (low >= 0xdc00 && low < 0xe000) {
        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    const bytes =
      code < 0x800
        ? [0xc0 | (code >> 6), 0x80 | (code & 63)]
        : code < 0x10000
          ? [0xe0 | (code >> 12), 0x80 | ((code >> 6) & 63), 0x80 | (code & 63)]
          : [0xf0 | (code >> 18), 0x80 | ((code >> 12) & 63), 0x80 | ((code >> 6) & 63), 0x80 | (code & 63)];
    for (const b of bytes) hash = Math.imul(hash ^ b, 0x01000193);
  }
  return hash >>> 0;
}

export function groupOf(id: string, groups: number): number {
  return fnv1a32(id) % groups;
}

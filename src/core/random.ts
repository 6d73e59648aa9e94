/**
 * A small seedable random source (mulberry32), so that a seed makes the
 * validation split and the augmentation of a run reproducible. Without a
 * seed, runs draw from Math.random as cellfinder draws unseeded.
 */
export interface Random {
  /** Uniform in [0, 1). */
  next(): number;
}

export function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  return {
    next() {
      state = (state + 0x6d2b79f5) >>> 0;
      let t = state;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    },
  };
}

export function unseededRandom(): Random {
  return { next: () => Math.random() };
}

export function randomFor(seed: number | undefined): Random {
  return seed === undefined ? unseededRandom() : seededRandom(seed);
}

export function uniform(random: Random, low: number, high: number): number {
  return low + (high - low) * random.next();
}

/** Fisher-Yates shuffle in place. */
export function shuffleInPlace<T>(items: T[], random: Random): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random.next() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

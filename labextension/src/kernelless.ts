/**
 * The result notebooks the panel opened, which open without a kernel. Kept in the browser's
 * storage, so a result tab the layout restorer brings back after a reload stays kernel-less too:
 * the restorer re-opens it as a plain notebook and knows nothing of how it was first opened.
 */

/** The most paths kept: a tab closed while the page was gone is never forgotten otherwise. */
export const MAX_PATHS = 200;

export class KernellessPaths {
  /** `scope` tells apart the Jupyter servers that share the browser's storage (their base URL). */
  constructor(
    private readonly storage: Pick<Storage, 'getItem' | 'setItem'> | null,
    scope: string
  ) {
    this.key = `hivemind-jupyter:kernelless-results:${scope}`;
  }

  has(path: string): boolean {
    return this.read().includes(path);
  }

  /** Marks a result the panel is about to open (the most recent last). */
  add(path: string): void {
    const paths = this.read().filter(p => p !== path);
    paths.push(path);
    this.write(paths.slice(-MAX_PATHS));
  }

  /** Forgets a result whose tab was closed: opened again from the file browser, it gets a kernel. */
  delete(path: string): void {
    const paths = this.read();
    if (paths.includes(path)) {
      this.write(paths.filter(p => p !== path));
    }
  }

  /** Read afresh each time: another tab of the same lab may have opened or closed results. */
  private read(): string[] {
    try {
      const stored = this.storage?.getItem(this.key);
      if (stored === null || stored === undefined) {
        return this.memory;
      }
      const parsed: unknown = JSON.parse(stored);
      return Array.isArray(parsed) ? parsed.filter((p): p is string => typeof p === 'string') : [];
    } catch {
      return this.memory; // blocked or corrupt storage: kernel-less in this page, not after a reload
    }
  }

  private write(paths: string[]): void {
    this.memory = paths;
    try {
      this.storage?.setItem(this.key, JSON.stringify(paths));
    } catch {
      // full or blocked storage: as above
    }
  }

  private readonly key: string;
  private memory: string[] = [];
}

import { KernellessPaths, MAX_PATHS } from '../kernelless';

/** A Storage as the browser's: strings by key, shared by every page of the origin. */
class FakeStorage {
  items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
}

describe('KernellessPaths', () => {
  it('remembers a result across page loads (a new instance over the same storage)', () => {
    const storage = new FakeStorage();
    new KernellessPaths(storage, '/').add('hivemind-results/hello-t-1/hello - t-1.ipynb');
    const reloaded = new KernellessPaths(storage, '/');
    expect(reloaded.has('hivemind-results/hello-t-1/hello - t-1.ipynb')).toBe(true);
    expect(reloaded.has('hello.ipynb')).toBe(false);
  });

  it('forgets a result whose tab was closed', () => {
    const storage = new FakeStorage();
    const paths = new KernellessPaths(storage, '/');
    paths.add('a.ipynb');
    paths.add('b.ipynb');
    paths.delete('a.ipynb');
    expect(new KernellessPaths(storage, '/').has('a.ipynb')).toBe(false);
    expect(new KernellessPaths(storage, '/').has('b.ipynb')).toBe(true);
  });

  it('keeps the servers sharing the browser apart', () => {
    const storage = new FakeStorage();
    new KernellessPaths(storage, '/user/ada/').add('a.ipynb');
    expect(new KernellessPaths(storage, '/user/bob/').has('a.ipynb')).toBe(false);
  });

  it('keeps only the most recent results', () => {
    const storage = new FakeStorage();
    const paths = new KernellessPaths(storage, '/');
    for (let i = 0; i <= MAX_PATHS; i++) {
      paths.add(`r${i}.ipynb`);
    }
    paths.add('r1.ipynb'); // opened again: the most recent now
    expect(paths.has('r0.ipynb')).toBe(false);
    expect(paths.has('r1.ipynb')).toBe(true);
    expect(paths.has(`r${MAX_PATHS}.ipynb`)).toBe(true);
    expect(JSON.parse(storage.getItem([...storage.items.keys()][0]) ?? '[]')).toHaveLength(MAX_PATHS);
  });

  it('works within the page when storage is missing, blocked or corrupt', () => {
    const none = new KernellessPaths(null, '/');
    none.add('a.ipynb');
    expect(none.has('a.ipynb')).toBe(true);

    const blocked = {
      getItem: (): string | null => {
        throw new Error('SecurityError');
      },
      setItem: (): void => {
        throw new Error('QuotaExceededError');
      }
    };
    const paths = new KernellessPaths(blocked, '/');
    paths.add('a.ipynb');
    expect(paths.has('a.ipynb')).toBe(true);

    const corrupt = new FakeStorage();
    corrupt.setItem('hivemind-jupyter:kernelless-results:/', '{not json');
    expect(new KernellessPaths(corrupt, '/').has('a.ipynb')).toBe(false);
  });
});

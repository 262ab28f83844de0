import {
  STATE_GLYPHS,
  STATE_LABELS,
  WORKER_LABELS,
  elapsed,
  endedAt,
  formatAgo,
  formatBytes,
  formatDuration,
  formatEnvCache,
  formatPythons,
  formatResources,
  formatTime,
  startedAt,
  stateClass,
  stateLabel,
  taskName
} from '../format';
import { ALL_STATES } from '../states';
import { ITask, toNumber } from '../types';

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [10.5 * 1024 ** 2, '10.5 MiB'],
    [150 * 1024 ** 3, '150 GiB'],
    [2 * 1024 ** 4, '2 TiB'],
    [3 * 1024 ** 6, '3072 PiB']
  ])('%d bytes is %s', (value, text) => {
    expect(formatBytes(value)).toBe(text);
  });

  it('reads int64 strings and treats nothing as zero', () => {
    expect(formatBytes('2048')).toBe('2 KiB');
    expect(formatBytes(undefined)).toBe('0 B');
    expect(formatBytes('not a number')).toBe('0 B');
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0s'],
    [59.9, '59s'],
    [60, '1m 0s'],
    [75, '1m 15s'],
    [3599, '59m 59s'],
    [3700, '1h 1m'],
    [86399, '23h 59m'],
    [90000, '1d 1h'],
    [10 * 86400 + 5 * 3600, '10d 5h']
  ])('%d s is %s', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });

  it('shows a dash for what is not a duration', () => {
    expect(formatDuration(-1)).toBe('–');
    expect(formatDuration(NaN)).toBe('–');
    expect(formatDuration(Infinity)).toBe('–');
  });
});

describe('formatAgo and formatTime', () => {
  it('counts back from now', () => {
    expect(formatAgo(988, 1000)).toBe('12s ago');
    expect(formatAgo(1000 - 3700, 1000)).toBe('1h 1m ago');
  });

  it('never goes below zero when clocks differ', () => {
    expect(formatAgo(1005, 1000)).toBe('0s ago');
  });

  it('says never for a time that is not there', () => {
    expect(formatAgo(undefined, 1000)).toBe('never');
    expect(formatAgo(0, 1000)).toBe('never');
  });

  it('writes a Unix time in seconds as a local date', () => {
    expect(formatTime(undefined)).toBe('');
    expect(formatTime(86400)).toBe(new Date(86400 * 1000).toLocaleString());
  });
});

describe('formatResources', () => {
  it('lists CPUs and memory, and GPUs only when asked for', () => {
    expect(formatResources({ cpus: 2, memory_bytes: '4294967296' })).toBe('2 CPU · 4 GiB');
    expect(formatResources({ cpus: 1, memory_bytes: 1024 ** 3, gpus: 1 })).toBe('1 CPU · 1 GiB · 1 GPU');
  });

  it('marks what is missing', () => {
    expect(formatResources(undefined)).toBe('– CPU · – mem');
  });
});

describe('task times', () => {
  const ran: ITask = {
    id: 't1',
    state: 'SUCCEEDED',
    created_at: 100,
    updated_at: 400,
    timeline: [
      { state: 'QUEUED', at: 100 },
      { state: 'ASSIGNED', at: 110 },
      { state: 'PREPARING', at: 120 },
      { state: 'RUNNING', at: 130 },
      { state: 'SUCCEEDED', at: 300 }
    ]
  };

  it('starts at the first PREPARING or RUNNING step', () => {
    expect(startedAt(ran)).toBe(120);
    expect(startedAt({ id: 'q', timeline: [{ state: 'QUEUED', at: 1 }] })).toBeUndefined();
  });

  it('ends at the last step in the terminal state, else at the last update', () => {
    expect(endedAt(ran)).toBe(300);
    expect(endedAt({ ...ran, timeline: [] })).toBe(400);
    expect(endedAt({ ...ran, state: 'RUNNING' })).toBeUndefined();
  });

  it('shows a waiting task as waiting since submission', () => {
    expect(elapsed({ id: 'w', state: 'QUEUED', created_at: 100 }, 175)).toBe('waiting 1m 15s');
    expect(elapsed({ id: 'w', state: 'ASSIGNED', created_at: 100 }, 110)).toBe('waiting 10s');
  });

  it('shows how long a finished task ran', () => {
    expect(elapsed(ran, 5000)).toBe('3m 0s');
  });

  it('counts a running task up to now', () => {
    expect(elapsed({ ...ran, state: 'RUNNING', timeline: ran.timeline!.slice(0, 4) }, 180)).toBe('1m 0s');
  });

  it('counts from submission when the answer carries no timeline', () => {
    expect(elapsed({ id: 'l', state: 'FAILED', created_at: 100, updated_at: 190 }, 5000)).toBe('1m 30s');
  });

  it('says so when a task ended without running', () => {
    const cancelled: ITask = {
      id: 'c',
      state: 'CANCELLED',
      created_at: 100,
      timeline: [
        { state: 'QUEUED', at: 100 },
        { state: 'CANCELLED', at: 150 }
      ]
    };
    expect(elapsed(cancelled, 5000)).toBe('did not run');
  });
});

describe('names and labels', () => {
  it('names a task by its manifest name, its notebook, or its id', () => {
    expect(taskName({ id: 'id1', manifest: { name: 'train', entry_notebook: 'a.ipynb' } })).toBe('train');
    expect(taskName({ id: 'id1', manifest: { entry_notebook: 'a.ipynb' } })).toBe('a.ipynb');
    expect(taskName({ id: 'id1' })).toBe('id1');
  });

  it('has a label and a glyph for every state, each different', () => {
    const labels = ALL_STATES.map(state => STATE_LABELS[state]);
    const glyphs = ALL_STATES.map(state => STATE_GLYPHS[state]);
    expect(new Set(labels).size).toBe(ALL_STATES.length);
    expect(new Set(glyphs).size).toBe(ALL_STATES.length);
  });

  it('writes states as people read them', () => {
    expect(stateLabel('TIMED_OUT')).toBe('Timed out');
    expect(stateLabel('RUNNING')).toBe('Running');
    expect(stateLabel(undefined)).toBe('Unknown');
    expect(WORKER_LABELS.WORKER_DRAINING).toBe('Draining');
  });

  it('gives each state a CSS class', () => {
    expect(stateClass('TIMED_OUT')).toBe('jp-HiveMind-state-timed_out');
    expect(stateClass(undefined)).toBe('jp-HiveMind-state-task_state_unspecified');
  });
});

describe('toNumber', () => {
  it('reads int64 strings and numbers, and zero for anything else', () => {
    expect(toNumber('42')).toBe(42);
    expect(toNumber(7)).toBe(7);
    expect(toNumber(undefined)).toBe(0);
    expect(toNumber('')).toBe(0);
    expect(toNumber('x')).toBe(0);
  });
});

describe('formatPythons', () => {
  it('lists the minor versions a worker runs', () => {
    expect(formatPythons(['3.11', '3.12'])).toBe('Python 3.11, 3.12');
    expect(formatPythons(['3.12'])).toBe('Python 3.12');
  });

  it('is empty for a worker that reports none (an older worker)', () => {
    expect(formatPythons(undefined)).toBe('');
    expect(formatPythons([])).toBe('');
    expect(formatPythons([''])).toBe('');
  });
});

describe('formatEnvCache', () => {
  it('shows how many environments, their size and the hit rate', () => {
    expect(
      formatEnvCache({
        environments: 3,
        size_bytes: String(1.5 * 1024 ** 3),
        hits: '8',
        builds: '2',
        failures: '0'
      })
    ).toBe('3 environments · 1.5 GiB · 80% hits');
  });

  it('counts failed builds as misses and rounds the rate', () => {
    expect(formatEnvCache({ environments: 1, size_bytes: 2048, hits: 1, builds: 1, failures: 1 })).toBe(
      '1 environment · 2 KiB · 33% hits'
    );
  });

  it('leaves the rate out before any task asked for an environment', () => {
    // every_field leaves int64 zeros as "0" strings; environments may be left out at 0
    expect(formatEnvCache({ size_bytes: '0', hits: '0', builds: '0', failures: '0' })).toBe(
      '0 environments · 0 B'
    );
  });

  it('is empty until the worker reports its cache', () => {
    expect(formatEnvCache(undefined)).toBe('');
  });
});

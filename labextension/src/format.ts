/**
 * How numbers, times and states are written in the panel.
 */
import { TaskState, isTerminal } from './states';
import { IEnvironmentCacheStats, IResources, ITask, WorkerState, toNumber } from './types';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function formatBytes(value: number | string | undefined): string {
  let n = toNumber(value);
  let unit = 0;
  while (Math.abs(n) >= 1024 && unit < UNITS.length - 1) {
    n /= 1024;
    unit++;
  }
  const digits = unit === 0 || n >= 100 ? 0 : n >= 10 ? 1 : 1;
  return `${n.toFixed(digits).replace(/\.0$/, '')} ${UNITS[unit]}`;
}

/** 75 -> "1m 15s", 3700 -> "1h 1m", 90000 -> "1d 1h". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return '–';
  }
  const s = Math.floor(seconds);
  if (s < 60) {
    return `${s}s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m}m ${s % 60}s`;
  }
  const h = Math.floor(m / 60);
  if (h < 24) {
    return `${h}h ${m % 60}m`;
  }
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** "12s ago" for a Unix time in seconds. */
export function formatAgo(at: number | undefined, now: number): string {
  if (!at) {
    return 'never';
  }
  return `${formatDuration(Math.max(0, now - at))} ago`;
}

export function formatTime(at: number | undefined): string {
  if (!at) {
    return '';
  }
  return new Date(at * 1000).toLocaleString();
}

/** When a task was submitted, short: the time today, else the day and the time. */
export function formatSubmitted(at: number | undefined, now: number): string {
  if (!at) {
    return '';
  }
  const when = new Date(at * 1000);
  const today = new Date(now);
  const time = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (when.toDateString() === today.toDateString()) {
    return time;
  }
  return `${when.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

export function formatResources(resources: IResources | undefined): string {
  const parts: string[] = [];
  const cpus = resources?.cpus ?? 0;
  const memory = toNumber(resources?.memory_bytes);
  const gpus = resources?.gpus ?? 0;
  parts.push(`${cpus || '–'} CPU`);
  parts.push(memory ? formatBytes(memory) : '– mem');
  if (gpus) {
    parts.push(`${gpus} GPU`);
  }
  return parts.join(' · ');
}

/** ["3.11", "3.12"] -> "Python 3.11, 3.12"; '' when the worker reports none. */
export function formatPythons(versions: string[] | undefined): string {
  const known = (versions ?? []).filter(Boolean);
  return known.length ? `Python ${known.join(', ')}` : '';
}

/**
 * A worker's environment cache: "3 environments · 1.2 GiB · 80% hits"; '' before its first
 * report. The hit rate counts builds and failed builds as misses, as `worker list` does.
 */
export function formatEnvCache(stats: IEnvironmentCacheStats | undefined): string {
  if (!stats) {
    return '';
  }
  const environments = stats.environments ?? 0;
  const hits = toNumber(stats.hits);
  const asked = hits + toNumber(stats.builds) + toNumber(stats.failures);
  const parts = [
    `${environments} ${environments === 1 ? 'environment' : 'environments'}`,
    formatBytes(stats.size_bytes)
  ];
  if (asked > 0) {
    parts.push(`${Math.round((100 * hits) / asked)}% hits`);
  }
  return parts.join(' · ');
}

/** When the task started running (its first PREPARING or RUNNING), or undefined. */
export function startedAt(task: ITask): number | undefined {
  for (const step of task.timeline ?? []) {
    if (step.state === 'PREPARING' || step.state === 'RUNNING') {
      return step.at;
    }
  }
  return undefined;
}

export function endedAt(task: ITask): number | undefined {
  if (!isTerminal(task.state)) {
    return undefined;
  }
  const timeline = task.timeline ?? [];
  for (let i = timeline.length - 1; i >= 0; i--) {
    if (timeline[i].state === task.state) {
      return timeline[i].at;
    }
  }
  return task.updated_at;
}

/** What the list shows as the task's time: waiting, running, or how long it ran. */
export function elapsed(task: ITask, now: number): string {
  const created = task.created_at ?? now;
  const waiting = task.state === 'QUEUED' || task.state === 'ASSIGNED';
  if (waiting) {
    return `waiting ${formatDuration(now - created)}`;
  }
  const end = isTerminal(task.state) ? (endedAt(task) ?? task.updated_at ?? now) : now;
  if (!task.timeline?.length) {
    // list answers carry no timeline: count from submission
    return formatDuration(end - created);
  }
  const start = startedAt(task);
  if (start === undefined) {
    return 'did not run';
  }
  return formatDuration(end - start);
}

export function taskName(task: ITask): string {
  return task.manifest?.name || task.manifest?.entry_notebook || task.id;
}

export const STATE_LABELS: { [state in TaskState]: string } = {
  TASK_STATE_UNSPECIFIED: 'Unknown',
  QUEUED: 'Queued',
  ASSIGNED: 'Assigned',
  PREPARING: 'Preparing',
  RUNNING: 'Running',
  UPLOADING: 'Uploading',
  SUCCEEDED: 'Succeeded',
  FAILED: 'Failed',
  CANCELLED: 'Cancelled',
  TIMED_OUT: 'Timed out',
  LOST: 'Lost'
};

/** One glyph per state: shape differs as well as colour, so state is not told by colour alone. */
export const STATE_GLYPHS: { [state in TaskState]: string } = {
  TASK_STATE_UNSPECIFIED: '?',
  QUEUED: '◷',
  ASSIGNED: '➜',
  PREPARING: '⚙',
  RUNNING: '▶',
  UPLOADING: '⇪',
  SUCCEEDED: '✔',
  FAILED: '✖',
  CANCELLED: '⊘',
  TIMED_OUT: '⌛',
  LOST: '⚠'
};

export function stateLabel(state: TaskState | undefined): string {
  return STATE_LABELS[state ?? 'TASK_STATE_UNSPECIFIED'] ?? String(state);
}

export function stateClass(state: TaskState | undefined): string {
  return `jp-HiveMind-state-${(state ?? 'TASK_STATE_UNSPECIFIED').toLowerCase()}`;
}

export const WORKER_LABELS: { [state in WorkerState]: string } = {
  WORKER_STATE_UNSPECIFIED: 'Unknown',
  WORKER_ONLINE: 'Online',
  WORKER_DRAINING: 'Draining',
  WORKER_OFFLINE: 'Offline',
  WORKER_LOST: 'Lost',
  WORKER_REVOKED: 'Revoked'
};

/**
 * Telling the user that a task ended while they looked elsewhere: which endings are news, what
 * the notification says, and whether the task's notebook is the one in view (then its own live
 * view already says it).
 */
import { formatDuration, taskName } from './format';
import { TaskState, isTerminal } from './states';
import { ISubmitted, ITask } from './types';

export type NoticeKind = 'success' | 'error' | 'warning' | 'info';

/** True when this update is the moment the task ended: it was seen unfinished, now it is not. */
export function endedNow(before: TaskState | undefined, after: TaskState | undefined): boolean {
  return before !== undefined && !isTerminal(before) && isTerminal(after);
}

const ENDINGS: { [state: string]: [NoticeKind, string] } = {
  SUCCEEDED: ['success', 'finished'],
  FAILED: ['error', 'failed'],
  TIMED_OUT: ['error', 'timed out'],
  LOST: ['error', 'was lost'],
  CANCELLED: ['warning', 'was cancelled']
};

/** The notification's kind and text, e.g. "HiveMind: analysis.ipynb [4] finished in 2m 3s." */
export function endNotice(task: ITask): { kind: NoticeKind; message: string } {
  const [kind, verb] = ENDINGS[task.state ?? ''] ?? ['info', 'ended'];
  const took =
    task.created_at && task.updated_at && task.updated_at >= task.created_at
      ? ` after ${formatDuration(task.updated_at - task.created_at)}`
      : '';
  const error = kind === 'error' && task.error ? `: ${task.error.split('\n')[0].slice(0, 80)}` : '';
  return { kind, message: `HiveMind: ${taskName(task)} ${verb}${took}${error}` };
}

const CELL_TASK = /^(.+\.ipynb) \[\d+\]$/;

function basename(path: string): string {
  return path.split('/').pop() ?? path;
}

/**
 * Whether the task's notebook is the document in view. `source` is the path the panel sent it
 * from, when it did; a cell's task names its notebook (`analysis.ipynb [4]`), compared by name.
 */
export function notebookInView(
  task: ITask,
  source: string | undefined,
  current: string | undefined
): boolean {
  if (!current) {
    return false;
  }
  if (source) {
    return source === current;
  }
  const match = CELL_TASK.exec(task.manifest?.name ?? '');
  return !!match && basename(match[1]) === basename(current);
}

/** What a submit's answer asks to tell the user (the secrets left behind), or null. */
export function submitNotice(path: string, answer: ISubmitted): string | null {
  const notice = (answer.notice ?? '').trim();
  return notice ? `HiveMind sent ${path}, but ${notice}` : null;
}

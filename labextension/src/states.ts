/**
 * Task states and the sets the panel reasons with: the one TypeScript definition.
 *
 * This file mirrors server/hivemind_nodepool/protocol/states.py (the sets) and the TaskState enum
 * of proto/hivemind/nodepool/v1/nodepool.proto (the names). tests/shared/test_states_mirror.py
 * reads the string literals below and fails when they and the Python side disagree, so keep each
 * set a plain list of literals.
 *
 * QUEUED -> ASSIGNED -> PREPARING -> RUNNING -> UPLOADING -> one of the terminal states.
 */

/** A task's state as the server's JSON names it (the proto enum's value names). */
export type TaskState =
  | 'TASK_STATE_UNSPECIFIED'
  | 'QUEUED'
  | 'ASSIGNED'
  | 'PREPARING'
  | 'RUNNING'
  | 'UPLOADING'
  | 'SUCCEEDED'
  | 'FAILED'
  | 'CANCELLED'
  | 'TIMED_OUT'
  | 'LOST';

/** Every state a task can be in, in the order of its life (the unspecified zero value is none). */
export const ALL_STATES: readonly TaskState[] = [
  'QUEUED',
  'ASSIGNED',
  'PREPARING',
  'RUNNING',
  'UPLOADING',
  'SUCCEEDED',
  'FAILED',
  'CANCELLED',
  'TIMED_OUT',
  'LOST'
];

/** The task has an outcome and never changes state again. */
export const TERMINAL_STATES: ReadonlySet<TaskState> = new Set<TaskState>([
  'SUCCEEDED',
  'FAILED',
  'CANCELLED',
  'TIMED_OUT',
  'LOST'
]);

/** An attempt holds a worker's resources: the task was handed to a worker and has not ended. */
export const ON_WORKER_STATES: ReadonlySet<TaskState> = new Set<TaskState>([
  'ASSIGNED',
  'PREPARING',
  'RUNNING',
  'UPLOADING'
]);

/** Not finished yet: waiting for a worker or on one. */
export const UNFINISHED_STATES: ReadonlySet<TaskState> = new Set<TaskState>([
  'QUEUED',
  'ASSIGNED',
  'PREPARING',
  'RUNNING',
  'UPLOADING'
]);

export function isTerminal(state: TaskState | undefined): boolean {
  return state !== undefined && TERMINAL_STATES.has(state);
}

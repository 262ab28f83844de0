import { ALL_STATES, ON_WORKER_STATES, TERMINAL_STATES, UNFINISHED_STATES, isTerminal } from '../states';

describe('task state sets', () => {
  it('splits every state into unfinished or terminal, never both', () => {
    for (const state of ALL_STATES) {
      expect(UNFINISHED_STATES.has(state)).toBe(!TERMINAL_STATES.has(state));
    }
    expect(UNFINISHED_STATES.size + TERMINAL_STATES.size).toBe(ALL_STATES.length);
  });

  it('counts a queued task as unfinished but not on a worker', () => {
    expect(UNFINISHED_STATES.has('QUEUED')).toBe(true);
    expect(ON_WORKER_STATES.has('QUEUED')).toBe(false);
    expect([...UNFINISHED_STATES].filter(s => !ON_WORKER_STATES.has(s))).toEqual(['QUEUED']);
  });

  it('keeps the states in the order of a task life', () => {
    expect(ALL_STATES.slice(0, 5)).toEqual(['QUEUED', 'ASSIGNED', 'PREPARING', 'RUNNING', 'UPLOADING']);
    expect(ALL_STATES).not.toContain('TASK_STATE_UNSPECIFIED');
  });
});

describe('isTerminal', () => {
  it.each(['SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT', 'LOST'] as const)('%s is terminal', state => {
    expect(isTerminal(state)).toBe(true);
  });

  it.each(['QUEUED', 'ASSIGNED', 'PREPARING', 'RUNNING', 'UPLOADING', 'TASK_STATE_UNSPECIFIED'] as const)(
    '%s is not terminal',
    state => {
      expect(isTerminal(state)).toBe(false);
    }
  );

  it('treats a missing state (left out of the JSON) as not terminal', () => {
    expect(isTerminal(undefined)).toBe(false);
  });
});

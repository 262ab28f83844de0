/**
 * A task's timeline as the panel shows it: its state transitions, and within them the phases its
 * worker reported (PHASE events), each with how long it took.
 *
 * A state's own message is the worker's word when it entered the state ("fetching the bundle" in
 * earlier releases); where phases follow, they say where the time went instead, so the message is
 * left out: a 20 s environment build is never shown as "Preparing: fetching the bundle".
 */
import { phaseDetails, phaseLabel } from './phases';
import { TaskState, isTerminal } from './states';
import { ITask, ITaskEvent } from './types';

export interface ITimelineStep {
  kind: 'state' | 'phase';
  /** Unix seconds */
  at: number;
  /** Seconds until the next step (a state: until the next state); undefined while unknown. */
  duration?: number;
  /** The step is the latest of an unfinished task: duration is the time so far. */
  ongoing?: boolean;
  state?: TaskState;
  /** A state's message, when no phase says more. */
  message?: string;
  /** A phase's name (phases.ts) and what a person reads for it. */
  phase?: string;
  label?: string;
  attempt?: number;
}

/** The phase events as steps; consecutive events of one phase (a build's steps) are one step. */
function phaseSteps(events: readonly ITaskEvent[]): ITimelineStep[] {
  const steps: ITimelineStep[] = [];
  for (const event of events) {
    if (event.kind !== 'PHASE' || !event.text) {
      continue;
    }
    const label = phaseLabel(event.text, phaseDetails(event.data_json));
    const last = steps[steps.length - 1];
    if (last && last.phase === event.text && last.attempt === event.attempt) {
      last.label = label; // the latest step of it
      continue;
    }
    steps.push({ kind: 'phase', at: event.at ?? 0, phase: event.text, label, attempt: event.attempt });
  }
  return steps;
}

function setDurations(steps: ITimelineStep[], ongoing: boolean, now: number): void {
  steps.forEach((step, i) => {
    const rest = steps.slice(i + 1);
    const next = step.kind === 'state' ? rest.find(s => s.kind === 'state') : rest[0];
    if (next) {
      step.duration = next.at && step.at ? Math.max(0, next.at - step.at) : undefined;
    } else if (ongoing && step.at && (step.kind === 'phase' || i === steps.length - 1)) {
      step.duration = Math.max(0, now - step.at);
      step.ongoing = true;
    }
  });
}

/** The steps, in time order: a state, then the phases reported while the task was in it. */
export function timelineSteps(task: ITask, events: readonly ITaskEvent[], now: number): ITimelineStep[] {
  const states: ITimelineStep[] = (task.timeline ?? []).map(step => ({
    kind: 'state',
    at: step.at ?? 0,
    state: step.state,
    message: step.message,
    attempt: step.attempt
  }));
  // Array.sort is stable: states keep their order, and a state comes before a phase of its moment.
  const steps = [...states, ...phaseSteps(events)].sort(
    (a, b) => a.at - b.at || (a.kind === b.kind ? 0 : a.kind === 'state' ? -1 : 1)
  );
  steps.forEach((step, i) => {
    if (step.kind === 'state' && steps[i + 1]?.kind === 'phase') {
      step.message = undefined;
    }
  });
  setDurations(steps, !isTerminal(task.state), now);
  return steps;
}

/** The phase the task is in now ('' when none is known or the task is not on a worker). */
export function currentPhase(task: ITask, events: readonly ITaskEvent[]): string {
  if (!(task.state === 'PREPARING' || task.state === 'RUNNING' || task.state === 'UPLOADING')) {
    return '';
  }
  const steps = phaseSteps(events).filter(step => !task.attempt || step.attempt === task.attempt);
  return steps.length ? (steps[steps.length - 1].label ?? '') : '';
}

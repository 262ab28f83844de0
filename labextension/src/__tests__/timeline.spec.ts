import { PHASE_LABELS, phaseDetails, phaseLabel } from '../phases';
import { currentPhase, timelineSteps } from '../timeline';
import { ITask, ITaskEvent } from '../types';

function phase(name: string, at: number, details?: object, attempt = 1): ITaskEvent {
  return { kind: 'PHASE', text: name, at, attempt, data_json: details ? JSON.stringify(details) : '' };
}

/** A task that spent 20 s building its environment while PREPARING, as the worker reports it. */
const task: ITask = {
  id: 't1',
  state: 'SUCCEEDED',
  attempt: 1,
  timeline: [
    { state: 'QUEUED', at: 100, message: 'queued' },
    { state: 'ASSIGNED', at: 101, message: 'assigned to box', attempt: 1 },
    { state: 'PREPARING', at: 102, message: 'fetching the bundle', attempt: 1 },
    { state: 'RUNNING', at: 124, message: 'running', attempt: 1 },
    { state: 'UPLOADING', at: 140, message: 'uploading the result', attempt: 1 },
    { state: 'SUCCEEDED', at: 141, message: 'succeeded', attempt: 1 }
  ]
};
const events: ITaskEvent[] = [
  phase('fetching', 102.1, { bytes: 2048, cached: false }),
  phase('environment', 103, { cached: false, step: 'installing requirements.txt' }),
  phase('environment', 110, { step: 'downloading 3 packages' }),
  phase('container', 124.1, { sandbox: 'container' }),
  phase('kernel', 125),
  phase('running', 127),
  phase('uploading', 140.1)
];

describe('timelineSteps', () => {
  it('puts each phase under the state it refines, with its duration', () => {
    const steps = timelineSteps(task, events, 200);
    expect(steps.map(s => s.state ?? s.phase)).toEqual([
      'QUEUED',
      'ASSIGNED',
      'PREPARING',
      'fetching',
      'environment',
      'RUNNING',
      'container',
      'kernel',
      'running',
      'UPLOADING',
      'uploading',
      'SUCCEEDED'
    ]);
    const byName = Object.fromEntries(steps.map(s => [s.state ?? s.phase, s]));
    expect(byName.environment.duration).toBeCloseTo(21);
    expect(byName.environment.label).toBe('building the environment: downloading 3 packages');
    expect(byName.fetching.label).toBe('fetching the bundle (2 KiB)');
    expect(byName.fetching.duration).toBeCloseTo(0.9);
    expect(byName.running.duration).toBeCloseTo(13);
    // a state's duration runs to the next state, not to its first phase
    expect(byName.PREPARING.duration).toBeCloseTo(22);
    expect(steps[steps.length - 1].duration).toBeUndefined();
  });

  it('leaves out the message of a state its phases explain', () => {
    const steps = timelineSteps(task, events, 200);
    const preparing = steps.find(s => s.state === 'PREPARING');
    expect(preparing?.message).toBeUndefined();
    expect(steps.find(s => s.state === 'ASSIGNED')?.message).toBe('assigned to box');
    // without phases (an earlier worker, or the log not loaded yet) the message stays
    expect(timelineSteps(task, [], 200).find(s => s.state === 'PREPARING')?.message).toBe(
      'fetching the bundle'
    );
  });

  it('counts the latest step of an unfinished task up to now', () => {
    const running: ITask = { ...task, state: 'RUNNING', timeline: task.timeline?.slice(0, 4) };
    const steps = timelineSteps(running, events.slice(0, 5), 130);
    const last = steps[steps.length - 1];
    expect(last.phase).toBe('kernel');
    expect(last.ongoing).toBe(true);
    expect(last.duration).toBeCloseTo(5);
  });
});

describe('currentPhase', () => {
  it('is the latest phase of the current attempt while the task is on a worker', () => {
    const running: ITask = { ...task, state: 'RUNNING', attempt: 1 };
    expect(currentPhase(running, events.slice(0, 5))).toBe('starting the kernel');
    expect(currentPhase({ ...running, attempt: 2 }, events)).toBe('');
    expect(currentPhase(task, events)).toBe('');
    expect(currentPhase({ ...running, state: 'QUEUED' }, events)).toBe('');
  });
});

describe('phaseLabel', () => {
  it.each([
    ['fetching', { bytes: 3 * 1024 ** 2 }, 'fetching the bundle (3 MiB)'],
    ['fetching', { bytes: 10, cached: true }, 'fetching the bundle (cached)'],
    ['environment', { cached: true }, 'reusing the environment'],
    ['environment', { step: 'resolving' }, 'building the environment: resolving'],
    ['container', { sandbox: 'container' }, 'starting the container'],
    ['container', { sandbox: 'process' }, "starting the task's process"],
    ['kernel', {}, 'starting the kernel'],
    ['something-new', {}, 'something-new'],
    ['constructor', {}, 'constructor']
  ])('%s %j reads %s', (name, details, label) => {
    expect(phaseLabel(name, details)).toBe(label);
  });

  it('has a label for every phase, and reads details defensively', () => {
    expect(Object.keys(PHASE_LABELS)).toEqual([
      'fetching',
      'environment',
      'container',
      'kernel',
      'running',
      'uploading'
    ]);
    expect(phaseDetails('not json')).toEqual({});
    expect(phaseDetails('[1]')).toEqual({});
    expect(phaseDetails(undefined)).toEqual({});
  });
});

// api.ts imports these ES-module packages for the real HTTP calls; the model gets a fake client.
jest.mock('@jupyterlab/coreutils', () => ({ URLExt: {} }));
jest.mock('@jupyterlab/services', () => ({ ServerConnection: {} }));

import { ApiError } from '../api';
import {
  HiveMindModel,
  MAX_LOG_EVENTS,
  describe as describeError,
  filterStates,
  matchesFilter,
  withTimeline
} from '../model';
import { ALL_STATES, TERMINAL_STATES, UNFINISHED_STATES } from '../states';
import { ITask, ITaskEvent } from '../types';
import { FakeWebSocket, deferred, fakeApi, installFakeWebSocket, page, settle, task } from './fakes';

describe('filters', () => {
  it('lets every state through with no filter', () => {
    expect(filterStates('')).toEqual([]);
    for (const state of ALL_STATES) {
      expect(matchesFilter('', state)).toBe(true);
    }
    expect(matchesFilter('', undefined)).toBe(true);
  });

  it('groups the unfinished and the finished states', () => {
    expect(filterStates('active')).toEqual(['QUEUED', 'ASSIGNED', 'PREPARING', 'RUNNING', 'UPLOADING']);
    expect(filterStates('finished')).toEqual(['SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT', 'LOST']);
    for (const state of ALL_STATES) {
      expect(matchesFilter('active', state)).toBe(UNFINISHED_STATES.has(state));
      expect(matchesFilter('finished', state)).toBe(TERMINAL_STATES.has(state));
    }
  });

  it('filters by one state', () => {
    expect(filterStates('RUNNING')).toEqual(['RUNNING']);
    expect(matchesFilter('RUNNING', 'RUNNING')).toBe(true);
    expect(matchesFilter('RUNNING', 'QUEUED')).toBe(false);
    expect(matchesFilter('RUNNING', undefined)).toBe(false);
  });

  it('hands out a copy, so a caller cannot change the groups', () => {
    filterStates('active').push('LOST');
    expect(filterStates('active')).not.toContain('LOST');
  });
});

describe('withTimeline', () => {
  const timeline = [{ state: 'QUEUED' as const, at: 1 }];

  it('keeps the timeline the task had when the update carries none', () => {
    const merged = withTimeline(task('a', { state: 'RUNNING' }), task('a', { timeline }));
    expect(merged.state).toBe('RUNNING');
    expect(merged.timeline).toBe(timeline);
  });

  it('takes the update as it is when it has a timeline or nothing was known', () => {
    const update = task('a', { timeline: [{ state: 'RUNNING', at: 2 }] });
    expect(withTimeline(update, task('a', { timeline }))).toBe(update);
    const bare = task('a');
    expect(withTimeline(bare, undefined)).toBe(bare);
  });
});

describe('describe', () => {
  it('shows the message of an error and anything else as text', () => {
    expect(describeError(new ApiError('pool away', 502))).toBe('pool away');
    expect(describeError('plain')).toBe('plain');
  });
});

describe('HiveMindModel', () => {
  let fake: ReturnType<typeof fakeApi>;
  let model: HiveMindModel;

  beforeEach(() => {
    installFakeWebSocket();
    fake = fakeApi();
    model = new HiveMindModel(fake.client);
  });

  afterEach(() => {
    model.dispose();
    jest.useRealTimers();
  });

  async function signedInWith(tasks = [task('t1'), task('t2')]): Promise<void> {
    fake.api.listTasks.mockResolvedValueOnce(page(tasks, { total: tasks.length }));
    await model.refreshSession();
    await settle();
    FakeWebSocket.last.open();
  }

  /** The server pushes a message on the open stream. */
  function push(message: unknown): void {
    FakeWebSocket.last.receive(message);
  }

  describe('taskEnded', () => {
    it('tells once when a task seen unfinished ends, even when the filter hides it', async () => {
      await signedInWith([task('run', { state: 'RUNNING' }), task('old', { state: 'SUCCEEDED' })]);
      const ended: string[] = [];
      model.taskEnded.connect((_, t) => ended.push(`${t.id}:${t.state}`));
      push({ type: 'task', task: task('run', { state: 'SUCCEEDED' }) });
      push({ type: 'task', task: task('run', { state: 'SUCCEEDED' }) }); // a repeat is no news
      push({ type: 'task', task: task('old', { state: 'SUCCEEDED' }) });
      push({ type: 'task', task: task('new', { state: 'QUEUED' }) });
      push({ type: 'task', task: task('new', { state: 'FAILED' }) });
      expect(ended).toEqual(['run:SUCCEEDED', 'new:FAILED']);
    });
  });

  describe('the task list', () => {
    it('loads the first page on sign-in and opens the stream', async () => {
      await signedInWith([task('t1'), task('t2')]);
      expect(model.signedIn).toBe(true);
      expect(model.tasks.map(t => t.id)).toEqual(['t1', 't2']);
      expect(model.total).toBe(2);
      expect(fake.api.listTasks).toHaveBeenCalledWith({ states: [], limit: 50 });
      expect(FakeWebSocket.created).toHaveLength(1);
      expect(model.tasksLoading).toBe(false);
    });

    it('asks for the filter states and reloads when the filter changes', async () => {
      await signedInWith();
      fake.api.listTasks.mockResolvedValueOnce(page([task('done', { state: 'FAILED' })]));
      model.setFilter('finished');
      await settle();
      expect(fake.api.listTasks).toHaveBeenLastCalledWith({ states: [...TERMINAL_STATES], limit: 50 });
      expect(model.tasks.map(t => t.id)).toEqual(['done']);
      model.setFilter('finished');
      expect(fake.api.listTasks).toHaveBeenCalledTimes(2);
    });

    it('keeps the answer of the newest request when an older one comes back late', async () => {
      await signedInWith();
      const slow = deferred<ReturnType<typeof page>>();
      const fast = deferred<ReturnType<typeof page>>();
      fake.api.listTasks.mockReturnValueOnce(slow.promise).mockReturnValueOnce(fast.promise);
      const first = model.reloadTasks();
      const second = model.reloadTasks();
      fast.resolve(page([task('new')]));
      await second;
      slow.resolve(page([task('old')]));
      await first;
      expect(model.tasks.map(t => t.id)).toEqual(['new']);
      expect(model.tasksLoading).toBe(false);
    });

    it('pages on with the token, skipping tasks it already shows', async () => {
      fake.api.listTasks.mockResolvedValueOnce(
        page([task('t1'), task('t2')], { total: 4, next_page_token: 'p2' })
      );
      await model.refreshSession();
      await settle();
      fake.api.listTasks.mockResolvedValueOnce(
        page([task('t2'), task('t3')], { total: 4, next_page_token: 'p3' })
      );
      await model.loadMore();
      expect(fake.api.listTasks).toHaveBeenLastCalledWith({ states: [], limit: 50, pageToken: 'p2' });
      expect(model.tasks.map(t => t.id)).toEqual(['t1', 't2', 't3']);
      expect(model.nextPageToken).toBe('p3');
      fake.api.listTasks.mockResolvedValueOnce(page([task('t4')], { total: 4 }));
      await model.loadMore();
      expect(model.tasks.map(t => t.id)).toEqual(['t1', 't2', 't3', 't4']);
      expect(model.nextPageToken).toBe('');
      await model.loadMore();
      expect(fake.api.listTasks).toHaveBeenCalledTimes(3);
    });

    it('keeps the page size between 1 and 500', async () => {
      await signedInWith();
      model.setPageSize(1000);
      expect(model.pageSize).toBe(500);
      model.setPageSize(-5);
      expect(model.pageSize).toBe(1);
      model.setPageSize(0);
      expect(model.pageSize).toBe(50);
      model.setPageSize(20.7);
      expect(model.pageSize).toBe(20);
      await settle();
      expect(fake.api.listTasks).toHaveBeenLastCalledWith({ states: [], limit: 20 });
    });

    it('clears everything on sign-out', async () => {
      await signedInWith();
      await model.select('t1');
      await model.signOut();
      expect(model.signedIn).toBe(false);
      expect(model.session).toEqual({ signed_in: false, pool: 'lab:50051' });
      expect(model.tasks).toEqual([]);
      expect(model.total).toBe(0);
      expect(model.selectedId).toBe('');
      expect(model.log).toBeNull();
      expect(FakeWebSocket.last.closedByClient).toBe(true);
    });

    it('explains a wrong password and keeps the user signed out', async () => {
      fake.api.signIn.mockRejectedValueOnce(new ApiError('unauthenticated', 401));
      expect(await model.signIn('ada', 'nope', 'lab:50051')).toBe(false);
      expect(model.signedIn).toBe(false);
      expect(model.sessionError).toMatch(/Wrong user name or password/);
      expect(model.busy).toBe(false);
    });
  });

  describe('pushed updates', () => {
    it('replaces a task it shows, keeping the timeline the update lacks', async () => {
      const timeline = [{ state: 'QUEUED' as const, at: 1000 }];
      await signedInWith([task('t1', { timeline }), task('t2')]);
      push({ type: 'task', task: task('t1', { state: 'RUNNING', updated_at: 1010 }) });
      expect(model.tasks.map(t => [t.id, t.state])).toEqual([
        ['t1', 'RUNNING'],
        ['t2', 'QUEUED']
      ]);
      expect(model.tasks[0].timeline).toEqual(timeline);
      expect(model.total).toBe(2);
    });

    it('puts a new task that matches the filter first', async () => {
      await signedInWith();
      push({ type: 'task', task: task('t3') });
      expect(model.tasks.map(t => t.id)).toEqual(['t3', 't1', 't2']);
      expect(model.total).toBe(3);
    });

    it('drops a task that leaves the filter, and ignores new ones outside it', async () => {
      await signedInWith();
      fake.api.listTasks.mockResolvedValueOnce(page([task('t1'), task('t2')]));
      model.setFilter('active');
      await settle();
      push({ type: 'task', task: task('t1', { state: 'SUCCEEDED' }) });
      push({ type: 'task', task: task('t9', { state: 'FAILED' }) });
      expect(model.tasks.map(t => t.id)).toEqual(['t2']);
      expect(model.total).toBe(1);
    });

    it('keeps a waiting reason pushed while the task was being read', async () => {
      await signedInWith();
      const answer = deferred<ITask>();
      fake.api.getTask.mockReturnValueOnce(answer.promise);
      const selecting = model.select('t1');
      push({ type: 'task', task: task('t1', { pending_reason: 'every worker is busy', updated_at: 1005 }) });
      const timeline = [{ state: 'QUEUED' as const, at: 1000 }];
      answer.resolve(task('t1', { timeline }));
      await selecting;
      expect(model.selected?.pending_reason).toBe('every worker is busy');
      expect(model.selected?.timeline).toEqual(timeline);
      expect(model.tasks[0].pending_reason).toBe('every worker is busy');
    });

    it('keeps a pushed copy newer than the answer to a submission', async () => {
      await signedInWith();
      push({ type: 'task', task: task('t3', { pending_reason: 'every worker is busy', updated_at: 1005 }) });
      await model.adopt(task('t3'));
      expect(model.tasks[0].pending_reason).toBe('every worker is busy');
    });

    it('ignores task messages without an id', async () => {
      await signedInWith();
      push({ type: 'task', task: { state: 'RUNNING' } });
      push({ type: 'task', task: 'nonsense' });
      expect(model.tasks.map(t => t.id)).toEqual(['t1', 't2']);
    });

    it('signs out when the stream says the sign-in is gone', async () => {
      await signedInWith();
      push({ type: 'session', signed_in: false });
      expect(model.signedIn).toBe(false);
      expect(model.sessionNotice).toMatch(/expired or was revoked/);
      expect(model.tasks).toEqual([]);
    });

    it('signs out on a 401 from any call', async () => {
      await signedInWith();
      fake.api.cancel.mockRejectedValueOnce(new ApiError('expired', 401));
      await model.cancel('t1');
      expect(model.signedIn).toBe(false);
      expect(model.actionError).toBe('expired');
    });

    it('re-reads the list after the stream reconnects', async () => {
      await signedInWith();
      jest.useFakeTimers();
      FakeWebSocket.last.drop();
      jest.advanceTimersByTime(1000);
      expect(FakeWebSocket.created).toHaveLength(2);
      fake.api.listTasks.mockResolvedValueOnce(page([task('missed'), task('t1'), task('t2')]));
      FakeWebSocket.last.open();
      await settle();
      expect(model.tasks.map(t => t.id)).toEqual(['missed', 't1', 't2']);
    });
  });

  describe('the open task log', () => {
    function events(from: number, to: number): ITaskEvent[] {
      const out: ITaskEvent[] = [];
      for (let seq = from; seq <= to; seq++) {
        out.push({ seq: String(seq), kind: 'STDOUT', text: `line ${seq}` });
      }
      return out;
    }

    it('loads the log, then follows it live in order and without repeats', async () => {
      await signedInWith();
      fake.api.events.mockResolvedValueOnce({ events: events(1, 3) });
      await model.select('t1');
      expect(fake.api.events).toHaveBeenCalledWith('t1', 0);
      expect(FakeWebSocket.last.sent).toContainEqual({ subscribe: 't1', after: 3 });
      push({ type: 'event', task_id: 't1', event: events(3, 3)[0] });
      push({ type: 'event', task_id: 't1', event: events(4, 4)[0] });
      push({ type: 'event', task_id: 't2', event: events(5, 5)[0] });
      expect(model.log?.events.map(e => e.text)).toEqual(['line 1', 'line 2', 'line 3', 'line 4']);
      expect(model.log?.lastSeq).toBe(4);
    });

    it('fetches what it missed when an event skips ahead', async () => {
      await signedInWith();
      fake.api.events.mockResolvedValueOnce({ events: events(1, 2) });
      await model.select('t1');
      fake.api.events.mockResolvedValueOnce({ events: events(3, 6) });
      push({ type: 'event', task_id: 't1', event: events(6, 6)[0] });
      await settle();
      expect(fake.api.events).toHaveBeenLastCalledWith('t1', 2);
      expect(model.log?.events.map(e => toSeq(e))).toEqual([1, 2, 3, 4, 5, 6]);
      expect(model.log?.loading).toBe(false);
    });

    it(`keeps the last ${MAX_LOG_EVENTS} events and counts the dropped ones`, async () => {
      await signedInWith();
      fake.api.events.mockResolvedValueOnce({ events: events(1, MAX_LOG_EVENTS + 3) });
      await model.select('t1');
      expect(model.log?.events).toHaveLength(MAX_LOG_EVENTS);
      expect(model.log?.dropped).toBe(3);
      expect(toSeq(model.log!.events[0])).toBe(4);
    });

    it('keeps the phases for the timeline when the log drops their events', async () => {
      await signedInWith();
      const all = events(1, MAX_LOG_EVENTS + 3);
      all[0] = { seq: '1', kind: 'PHASE', text: 'fetching' };
      fake.api.events.mockResolvedValueOnce({ events: all });
      await model.select('t1');
      push({
        type: 'event',
        task_id: 't1',
        event: { seq: String(MAX_LOG_EVENTS + 4), kind: 'PHASE', text: 'uploading' }
      });
      expect(model.log?.dropped).toBe(4);
      expect(model.log?.phases.map(e => e.text)).toEqual(['fetching', 'uploading']);
    });

    it('unsubscribes from the log it leaves', async () => {
      await signedInWith();
      await model.select('t1');
      await model.select('t2');
      expect(FakeWebSocket.last.sent).toContainEqual({ unsubscribe: 't1' });
      await model.select('');
      expect(model.log).toBeNull();
      expect(model.selected).toBeUndefined();
    });

    function toSeq(event: ITaskEvent): number {
      return Number(event.seq);
    }
  });

  describe('recovery after an outage', () => {
    it('looks again by itself, backing off from 3 s to 30 s', async () => {
      await signedInWith();
      jest.useFakeTimers();
      fake.api.listTasks.mockRejectedValue(new ApiError('pool away', 502));
      await model.reloadTasks();
      expect(model.tasksError).toBe('pool away');
      const delays: number[] = [];
      for (let round = 0; round < 6; round++) {
        const before = fake.api.getSession.mock.calls.length;
        let waited = 0;
        while (fake.api.getSession.mock.calls.length === before && waited < 60000) {
          await jest.advanceTimersByTimeAsync(500);
          waited += 500;
        }
        delays.push(waited);
      }
      expect(delays).toEqual([3000, 6000, 12000, 24000, 30000, 30000]);
    });

    it('starts the back-off over once a page loads', async () => {
      await signedInWith();
      jest.useFakeTimers();
      fake.api.listTasks.mockRejectedValueOnce(new ApiError('pool away', 502));
      await model.reloadTasks();
      await jest.advanceTimersByTimeAsync(3000);
      expect(fake.api.getSession).toHaveBeenCalledTimes(2);
      expect(model.tasksError).toBe('');
      fake.api.listTasks.mockRejectedValueOnce(new ApiError('pool away', 504));
      await model.reloadTasks();
      await jest.advanceTimersByTimeAsync(3000);
      expect(fake.api.getSession).toHaveBeenCalledTimes(3);
    });

    it('does not retry an answer that will not change', async () => {
      await signedInWith();
      jest.useFakeTimers();
      fake.api.listTasks.mockRejectedValueOnce(new ApiError('bad filter', 400));
      await model.reloadTasks();
      await jest.advanceTimersByTimeAsync(60000);
      expect(fake.api.getSession).toHaveBeenCalledTimes(1);
      expect(model.tasksError).toBe('bad filter');
    });
  });
});

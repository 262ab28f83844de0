/**
 * The panel's state: the session, one page-wise list of the user's tasks kept live from the
 * stream, the selected task with its log, and the pool's workers. Views render from it and call
 * its methods; it emits `changed` after every change.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, HiveMindApi } from './api';
import { endedNow } from './notify';
import { TERMINAL_STATES, TaskState, UNFINISHED_STATES } from './states';
import { ConnectionState, TaskStream } from './stream';
import { IPoolStatus, IResult, ISession, ITask, ITaskEvent, IWorker, StreamMessage, toNumber } from './types';

/** The most log events kept for one task in the browser; older ones are dropped. */
export const MAX_LOG_EVENTS = 5000;
const POOL_REFRESH_MS = 10000;
const POOL_AFTER_TASK_CHANGE_MS = 1500;

export type View = 'tasks' | 'pool';

export interface ILogState {
  taskId: string;
  events: ITaskEvent[];
  /** The task's PHASE events, kept whatever the log drops: the timeline's steps (a few per attempt). */
  phases: ITaskEvent[];
  lastSeq: number;
  dropped: number;
  loading: boolean;
  error: string;
}

export class HiveMindModel implements IDisposable {
  constructor(readonly api: HiveMindApi) {
    this.stream = new TaskStream(
      () => api.streamUrl(),
      taskId => (this._log && this._log.taskId === taskId ? this._log.lastSeq : 0)
    );
    this.stream.message.connect(this._onMessage, this);
    this.stream.stateChanged.connect(this._onConnection, this);
    this.stream.reconnected.connect(() => void this.reloadTasks(), this);
  }

  readonly stream: TaskStream;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A task the stream had seen unfinished has just ended (for notifications). */
  get taskEnded(): ISignal<this, ITask> {
    return this._taskEnded;
  }

  /** Where the panel sent a task from, by id, so a notification knows its notebook. */
  readonly sources = new Map<string, string>();

  get isDisposed(): boolean {
    return this._disposed;
  }

  // --- session -------------------------------------------------------------------------------

  session: ISession | null = null;
  sessionError = '';
  sessionNotice = '';
  busy = false;

  async refreshSession(): Promise<void> {
    try {
      this.session = await this.api.getSession();
      this.sessionError = '';
    } catch (error) {
      this.session = null;
      this.sessionError = describe(error);
    }
    this._afterSession();
  }

  async signIn(username: string, password: string, pool: string): Promise<boolean> {
    this.busy = true;
    this.sessionError = '';
    this.sessionNotice = '';
    this._emit();
    try {
      this.session = await this.api.signIn(username, password, pool);
      return true;
    } catch (error) {
      this.sessionError =
        error instanceof ApiError && error.status === 401
          ? 'Wrong user name or password. Check them and try again, or ask your lab admin to reset them.'
          : describe(error);
      return false;
    } finally {
      this.busy = false;
      this._afterSession();
    }
  }

  async signOut(): Promise<void> {
    const pool = this.session?.pool;
    try {
      await this.api.signOut();
      this.sessionError = '';
    } catch (error) {
      this.sessionError = describe(error);
    }
    this.session = { signed_in: false, pool };
    this.sessionNotice = '';
    this._afterSession();
  }

  get signedIn(): boolean {
    return !!this.session?.signed_in;
  }

  // --- tasks ---------------------------------------------------------------------------------

  view: View = 'tasks';
  pageSize = 50;
  filter: TaskFilter = '';
  tasks: ITask[] = [];
  total = 0;
  nextPageToken = '';
  tasksLoading = false;
  tasksError = '';
  selectedId = '';
  actionError = '';
  results = new Map<string, IResult>();
  resultLoading = '';

  get selected(): ITask | undefined {
    return this.selectedId ? (this._byId.get(this.selectedId) ?? this._detail) : undefined;
  }

  setView(view: View): void {
    this.view = view;
    if (view === 'pool') {
      void this.refreshPool();
    }
    this._schedulePoolRefresh();
    this._emit();
  }

  setFilter(filter: TaskFilter): void {
    if (filter !== this.filter) {
      this.filter = filter;
      void this.reloadTasks();
    }
  }

  setPageSize(size: number): void {
    const clean = Math.max(1, Math.min(500, Math.floor(size) || 50));
    if (clean !== this.pageSize) {
      this.pageSize = clean;
      if (this.signedIn) {
        void this.reloadTasks();
      }
    }
  }

  /** Loads the first page again (after a filter change, a reconnect or "Refresh"). */
  async reloadTasks(): Promise<void> {
    if (!this.signedIn) {
      return;
    }
    const generation = ++this._generation;
    this.tasksLoading = true;
    this._emit();
    try {
      const page = await this.api.listTasks({ states: filterStates(this.filter), limit: this.pageSize });
      if (generation !== this._generation) {
        return;
      }
      this.tasks = page.tasks ?? [];
      this._byId = new Map(this.tasks.map(t => [t.id, t]));
      this._noteStates(this.tasks);
      this.total = page.total ?? this.tasks.length;
      this.nextPageToken = page.next_page_token ?? '';
      this.tasksError = '';
      this._recovered();
    } catch (error) {
      if (generation !== this._generation) {
        return;
      }
      this._handleAuthError(error);
      this.tasksError = describe(error);
      if (error instanceof ApiError && RETRYABLE.has(error.status)) {
        this._scheduleRecovery();
      }
    } finally {
      if (generation === this._generation) {
        this.tasksLoading = false;
        this._emit();
      }
    }
  }

  async loadMore(): Promise<void> {
    if (!this.nextPageToken || this.tasksLoading) {
      return;
    }
    const generation = this._generation;
    this.tasksLoading = true;
    this._emit();
    try {
      const page = await this.api.listTasks({
        states: filterStates(this.filter),
        limit: this.pageSize,
        pageToken: this.nextPageToken
      });
      if (generation !== this._generation) {
        return;
      }
      for (const task of page.tasks ?? []) {
        if (!this._byId.has(task.id)) {
          this.tasks.push(task);
          this._byId.set(task.id, task);
        }
      }
      this._noteStates(page.tasks ?? []);
      this.tasks = this.tasks.slice();
      this.total = page.total ?? this.total;
      this.nextPageToken = page.next_page_token ?? '';
    } catch (error) {
      this._handleAuthError(error);
      this.tasksError = describe(error);
    } finally {
      this.tasksLoading = false;
      this._emit();
    }
  }

  async select(taskId: string): Promise<void> {
    if (this._log && this._log.taskId !== taskId) {
      this.stream.unsubscribe(this._log.taskId);
    }
    this.selectedId = taskId;
    this.actionError = '';
    this._detail = undefined;
    if (!taskId) {
      this._log = null;
      this._emit();
      return;
    }
    this._log = { taskId, events: [], phases: [], lastSeq: 0, dropped: 0, loading: true, error: '' };
    this._emit();
    try {
      const task = await this.api.getTask(taskId);
      if (this.selectedId === taskId) {
        this._detail = this._takeAnswer(task, false);
      }
    } catch (error) {
      if (this.selectedId === taskId) {
        this.actionError = describe(error);
      }
    }
    await this._loadEvents(taskId);
  }

  get log(): ILogState | null {
    return this._log;
  }

  async cancel(taskId: string): Promise<void> {
    await this._act(taskId, () => this.api.cancel(taskId));
  }

  async retry(taskId: string): Promise<ITask | undefined> {
    const task = await this._act(taskId, () => this.api.retry(taskId));
    if (task) {
      await this.select(task.id);
    }
    return task;
  }

  async fetchResult(taskId: string): Promise<IResult | undefined> {
    this.resultLoading = taskId;
    this.actionError = '';
    this._emit();
    try {
      const result = await this.api.fetchResult(taskId);
      this.results.set(taskId, result);
      return result;
    } catch (error) {
      this._handleAuthError(error);
      this.actionError = describe(error);
      return undefined;
    } finally {
      this.resultLoading = '';
      this._emit();
    }
  }

  /** Adds a task the user just submitted and selects it. */
  async adopt(task: ITask): Promise<void> {
    this._takeAnswer(task, true);
    this.view = 'tasks';
    await this.select(task.id);
  }

  // --- pool ----------------------------------------------------------------------------------

  workers: IWorker[] = [];
  poolStatus: IPoolStatus | null = null;
  poolError = '';
  poolLoading = false;
  poolLoadedAt = 0;
  connection: ConnectionState = 'closed';
  /** Whether the panel is on screen; the pool is refreshed only while someone can see it. */
  visible = true;

  setVisible(visible: boolean): void {
    this.visible = visible;
    this._schedulePoolRefresh();
    if (visible && this.view === 'pool') {
      void this.refreshPool();
    }
  }

  async refreshPool(): Promise<void> {
    if (!this.signedIn || this.poolLoading) {
      return;
    }
    this.poolLoading = true;
    this._emit();
    try {
      const [workers, status] = await Promise.all([this.api.workers(), this.api.pool()]);
      this.workers = workers;
      this.poolStatus = status;
      this.poolError = '';
      this.poolLoadedAt = Date.now() / 1000;
    } catch (error) {
      this._handleAuthError(error);
      this.poolError = describe(error);
    } finally {
      this.poolLoading = false;
      this._emit();
    }
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._clearPoolTimer();
    this._recovered();
    this.stream.dispose();
    Signal.clearData(this);
  }

  // --- internals -----------------------------------------------------------------------------

  private _afterSession(): void {
    if (this.signedIn) {
      this.stream.start();
      void this.reloadTasks();
      if (this.view === 'pool') {
        void this.refreshPool();
      }
    } else {
      this.stream.stop();
      this._generation++;
      this.tasks = [];
      this._byId.clear();
      this._lastState.clear();
      this.total = 0;
      this.nextPageToken = '';
      this.selectedId = '';
      this._log = null;
      this._detail = undefined;
      this.workers = [];
      this.poolStatus = null;
      this.results.clear();
    }
    this._schedulePoolRefresh();
    this._emit();
  }

  private async _loadEvents(taskId: string): Promise<void> {
    const log = this._log;
    if (!log || log.taskId !== taskId) {
      return;
    }
    try {
      const page = await this.api.events(taskId, log.lastSeq);
      if (this._log !== log) {
        return;
      }
      this._appendEvents(log, page.events ?? []);
      log.error = '';
    } catch (error) {
      if (this._log === log) {
        log.error = describe(error);
      }
    } finally {
      if (this._log === log) {
        log.loading = false;
        this.stream.subscribe(taskId);
        this._emit();
      }
    }
  }

  private _appendEvents(log: ILogState, events: ITaskEvent[]): boolean {
    let added = false;
    for (const event of events) {
      const seq = toNumber(event.seq);
      if (seq <= log.lastSeq) {
        continue; // already shown: resubscribing after a reconnect may repeat events
      }
      log.events.push(event);
      if (event.kind === 'PHASE') {
        log.phases = [...log.phases, event];
      }
      log.lastSeq = seq;
      added = true;
    }
    if (log.events.length > MAX_LOG_EVENTS) {
      const extra = log.events.length - MAX_LOG_EVENTS;
      log.events.splice(0, extra);
      log.dropped += extra;
    }
    if (added) {
      log.events = log.events.slice();
    }
    return added;
  }

  private _onMessage(_: TaskStream, message: StreamMessage): void {
    if (message.type === 'task' && message.task && typeof message.task === 'object') {
      const task = message.task as ITask;
      if (typeof task.id !== 'string') {
        return;
      }
      const before = this._byId.get(task.id) ?? (this._detail?.id === task.id ? this._detail : undefined);
      const merged = withTimeline(task, before);
      const seen = this._lastState.get(task.id);
      this._lastState.set(task.id, task.state ?? 'TASK_STATE_UNSPECIFIED');
      if (endedNow(seen, task.state)) {
        this._taskEnded.emit(merged);
      }
      this._upsert(merged, true);
      if (this.selectedId === task.id) {
        this._detail = merged;
        if (before?.state !== task.state) {
          void this._refreshDetail(task.id);
        }
      }
      if (before?.state !== task.state) {
        this._poolSoon();
      }
      this._emit();
    } else if (message.type === 'session' && message.signed_in === false) {
      this._signedOutElsewhere();
    } else if (message.type === 'error' && message.status === 401) {
      this._signedOutElsewhere();
    } else if (message.type === 'event') {
      const taskId = message.task_id as string;
      const event = message.event as ITaskEvent;
      const log = this._log;
      if (!log || log.taskId !== taskId || !event) {
        return;
      }
      const seq = toNumber(event.seq);
      if (seq > log.lastSeq + 1 && !log.loading) {
        // a gap: fetch what is missing instead of showing the log out of order
        log.loading = true;
        void this._loadEvents(taskId);
        return;
      }
      if (this._appendEvents(log, [event])) {
        this._emit();
      }
    }
  }

  /** The stream's tasks carry no timeline: the open task is fetched whole when its state moves. */
  private async _refreshDetail(taskId: string): Promise<void> {
    try {
      const task = await this.api.getTask(taskId);
      if (this.selectedId === taskId) {
        this._detail = this._takeAnswer(task, false);
        this._emit();
      }
    } catch {
      // the next state change tries again; the detail keeps what it has
    }
  }

  /** Puts a task into the list, or updates it where it is; honours the state filter. */
  /** Tasks first seen in a list answer: their ending, when the stream brings it, is news. */
  private _noteStates(tasks: ITask[]): void {
    for (const task of tasks) {
      if (task.state && !this._lastState.has(task.id)) {
        this._lastState.set(task.id, task.state);
      }
    }
  }

  /**
   * A task read by request (submission, detail, action). The stream may have brought a newer copy
   * while the request was on its way (a waiting reason pushed right after the submission): the
   * newer one wins, with the answer's timeline. Returns the copy kept.
   */
  private _takeAnswer(task: ITask, insertNew: boolean): ITask {
    const current = this._byId.get(task.id) ?? (this._detail?.id === task.id ? this._detail : undefined);
    const kept =
      current && (current.updated_at ?? 0) > (task.updated_at ?? 0) ? withTimeline(current, task) : task;
    this._upsert(kept, insertNew);
    return kept;
  }

  private _upsert(task: ITask, insertNew: boolean): void {
    this._noteStates([task]);
    const known = this._byId.has(task.id);
    const matches = matchesFilter(this.filter, task.state);
    if (known) {
      if (matches) {
        this._byId.set(task.id, task);
        this.tasks = this.tasks.map(t => (t.id === task.id ? task : t));
      } else {
        this._byId.delete(task.id);
        this.tasks = this.tasks.filter(t => t.id !== task.id);
        this.total = Math.max(0, this.total - 1);
      }
    } else if (insertNew && matches && this.signedIn) {
      this._byId.set(task.id, task);
      this.tasks = [task, ...this.tasks];
      this.total += 1;
    }
  }

  private async _act(taskId: string, call: () => Promise<ITask>): Promise<ITask | undefined> {
    this.actionError = '';
    this._emit();
    try {
      const answer = await call();
      const task = this._takeAnswer(answer, true);
      if (this.selectedId === task.id) {
        this._detail = task;
      }
      return task;
    } catch (error) {
      this._handleAuthError(error);
      this.actionError = describe(error);
      return undefined;
    } finally {
      this._emit();
    }
  }

  private _handleAuthError(error: unknown): void {
    if (error instanceof ApiError && error.status === 401) {
      this._signedOutElsewhere();
    }
  }

  private _signedOutElsewhere(): void {
    if (this.signedIn) {
      this.session = { signed_in: false, pool: this.session?.pool };
      this.sessionNotice = 'Your sign-in to the pool has expired or was revoked. Sign in again.';
      this._afterSession();
    }
  }

  /**
   * The pool (or Jupyter) did not answer: look again later by itself, backing off from 3 s to 30 s,
   * so a panel left open recovers after an outage without a storm of requests.
   */
  private _scheduleRecovery(): void {
    if (this._recoveryTimer !== null || this._disposed || !this.signedIn) {
      return;
    }
    const delay = Math.min(30000, 3000 * 2 ** this._recoveryAttempt);
    this._recoveryAttempt += 1;
    this._recoveryTimer = window.setTimeout(() => {
      this._recoveryTimer = null;
      void this.refreshSession();
    }, delay);
  }

  private _recovered(): void {
    this._recoveryAttempt = 0;
    if (this._recoveryTimer !== null) {
      window.clearTimeout(this._recoveryTimer);
      this._recoveryTimer = null;
    }
  }

  private _onConnection(_: TaskStream, state: ConnectionState): void {
    this.connection = state;
    this._emit();
  }

  private _schedulePoolRefresh(): void {
    this._clearPoolTimer();
    if (this.signedIn && this.visible && this.view === 'pool' && !this._disposed) {
      this._poolTimer = window.setInterval(() => void this.refreshPool(), POOL_REFRESH_MS);
    }
  }

  private _clearPoolTimer(): void {
    if (this._poolTimer !== null) {
      window.clearInterval(this._poolTimer);
      this._poolTimer = null;
    }
  }

  private _poolSoon(): void {
    if (this.view !== 'pool' || !this.visible || this._poolSoonTimer !== null) {
      return;
    }
    this._poolSoonTimer = window.setTimeout(() => {
      this._poolSoonTimer = null;
      void this.refreshPool();
    }, POOL_AFTER_TASK_CHANGE_MS);
  }

  private _emit(): void {
    if (!this._disposed) {
      this._changed.emit();
    }
  }

  private _disposed = false;
  private _recoveryTimer: number | null = null;
  private _recoveryAttempt = 0;
  private _generation = 0;
  private _byId = new Map<string, ITask>();
  private _detail: ITask | undefined = undefined;
  private _log: ILogState | null = null;
  private _poolTimer: number | null = null;
  private _poolSoonTimer: number | null = null;
  private _changed = new Signal<this, void>(this);
  private _taskEnded = new Signal<this, ITask>(this);
  /** The last state the stream told of each task, filtered out of the list or not. */
  private _lastState = new Map<string, TaskState>();
}

/** Keeps the timeline a task had when an update comes without one (list answers omit it). */
export function withTimeline(task: ITask, previous: ITask | undefined): ITask {
  if ((task.timeline ?? []).length || !previous?.timeline?.length) {
    return task;
  }
  return { ...task, timeline: previous.timeline };
}

/** Statuses that mean "not now" rather than "no": 0 (no answer), 502 and 504 (the pool is away). */
const RETRYABLE = new Set([0, 502, 503, 504]);

/** The list's filter: every task, the unfinished or finished ones, or one state. */
export type TaskFilter = '' | 'active' | 'finished' | TaskState;

/** The states a filter lets through, as the list request names them; none means every state. */
export function filterStates(filter: TaskFilter): TaskState[] {
  if (filter === 'active') {
    return [...UNFINISHED_STATES];
  }
  if (filter === 'finished') {
    return [...TERMINAL_STATES];
  }
  return filter ? [filter] : [];
}

export function matchesFilter(filter: TaskFilter, state: TaskState | undefined): boolean {
  const states = filterStates(filter);
  return !states.length || (state !== undefined && states.includes(state));
}

export function describe(error: unknown): string {
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}

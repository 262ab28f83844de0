/**
 * Stand-ins for the browser's WebSocket and the panel's REST client, so the model and the stream
 * run in jest without a server.
 */
import type { HiveMindApi } from '../api';
import type { IEventPage, ISession, ITask, ITaskPage } from '../types';

/** A WebSocket the test drives: it opens, delivers and closes when the test says so. */
export class FakeWebSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  /** Every socket made since the last `reset()`, oldest first. */
  static created: FakeWebSocket[] = [];

  static reset(): void {
    FakeWebSocket.created = [];
  }

  static get last(): FakeWebSocket {
    const socket = FakeWebSocket.created[FakeWebSocket.created.length - 1];
    if (!socket) {
      throw new Error('no WebSocket was opened');
    }
    return socket;
  }

  constructor(readonly url: string) {
    FakeWebSocket.created.push(this);
  }

  readyState = FakeWebSocket.CONNECTING;
  sent: unknown[] = [];
  closedByClient = false;
  onopen: (() => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: (() => void) | null = null;
  onerror: (() => void) | null = null;

  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }

  close(): void {
    this.closedByClient = true;
    this.readyState = FakeWebSocket.CLOSED;
  }

  /** The server accepted the connection. */
  open(): void {
    this.readyState = FakeWebSocket.OPEN;
    this.onopen?.();
  }

  /** The server pushed a message (an object is sent as JSON, a string as it is). */
  receive(message: unknown): void {
    this.onmessage?.({ data: typeof message === 'string' ? message : JSON.stringify(message) });
  }

  /** The connection dropped. */
  drop(): void {
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose?.();
  }
}

export function installFakeWebSocket(): void {
  FakeWebSocket.reset();
  (globalThis as unknown as { WebSocket: unknown }).WebSocket = FakeWebSocket;
}

/** A promise the test settles by hand, to order answers the way a slow server would. */
export interface IDeferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

export function deferred<T>(): IDeferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

export function task(id: string, fields: Partial<ITask> = {}): ITask {
  return { id, state: 'QUEUED', created_at: 1000, updated_at: 1000, ...fields };
}

export function page(tasks: ITask[], fields: Partial<ITaskPage> = {}): ITaskPage {
  return { tasks, total: tasks.length, next_page_token: '', ...fields };
}

/** The REST client's methods as jest mocks with answers for a signed-in user and an empty pool. */
export function fakeApi() {
  const api = {
    streamUrl: jest.fn(() => 'ws://jupyter/hivemind/api/stream'),
    getSession: jest.fn((): Promise<ISession> =>
      Promise.resolve({ signed_in: true, user: 'ada', pool: 'lab:50051' })
    ),
    signIn: jest.fn((): Promise<ISession> =>
      Promise.resolve({ signed_in: true, user: 'ada', pool: 'lab:50051' })
    ),
    signOut: jest.fn((): Promise<void> => Promise.resolve()),
    listTasks: jest.fn(
      (options: { states?: string[]; limit?: number; pageToken?: string }): Promise<ITaskPage> =>
        Promise.resolve(page([]))
    ),
    getTask: jest.fn((id: string): Promise<ITask> => Promise.resolve(task(id))),
    events: jest.fn((id: string, after?: number): Promise<IEventPage> => Promise.resolve({ events: [] })),
    cancel: jest.fn((id: string): Promise<ITask> => Promise.resolve(task(id, { state: 'CANCELLED' }))),
    retry: jest.fn((id: string): Promise<ITask> => Promise.resolve(task(`${id}-retry`))),
    fetchResult: jest.fn((id: string) => Promise.resolve({ folder: `results/${id}` })),
    workers: jest.fn(() => Promise.resolve([])),
    pool: jest.fn(() => Promise.resolve({}))
  };
  return { api, client: api as unknown as HiveMindApi };
}

/** Lets every promise callback that is ready run (answers of mocks resolve in microtasks). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) {
    await Promise.resolve();
  }
}

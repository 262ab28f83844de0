/**
 * The live stream: one WebSocket to /hivemind/api/stream that reconnects by itself.
 *
 * Reconnects back off exponentially with jitter (0.5 s doubling up to 30 s) so a server that is
 * down is not hammered by every open JupyterLab; a successful open resets the delay. After a
 * reconnect every log subscription is renewed from the last event seen, so logs have no gaps and
 * no duplicates, and `reconnected` tells the task list to catch up on what it missed.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { StreamMessage } from './types';

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 30000;

export type ConnectionState = 'connecting' | 'open' | 'closed';

export class TaskStream implements IDisposable {
  /**
   * @param url the WebSocket address (a function, so a changed token is picked up on reconnect)
   * @param resumeFrom the last event sequence number seen for a task, to resubscribe after it
   */
  constructor(
    private readonly url: () => string,
    private readonly resumeFrom: (taskId: string) => number
  ) {}

  get message(): ISignal<this, StreamMessage> {
    return this._message;
  }

  get stateChanged(): ISignal<this, ConnectionState> {
    return this._stateChanged;
  }

  /** Emitted on every open after the first: the owner should refetch what may have changed. */
  get reconnected(): ISignal<this, void> {
    return this._reconnected;
  }

  get state(): ConnectionState {
    return this._state;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** How many times the socket has been opened; the tests read it to see reconnects. */
  get opens(): number {
    return this._opens;
  }

  start(): void {
    if (this._disposed || this._wanted) {
      return;
    }
    this._wanted = true;
    this._connect();
  }

  stop(): void {
    this._wanted = false;
    this._clearTimer();
    this._subscriptions.clear();
    if (this._socket) {
      const socket = this._socket;
      this._socket = null;
      socket.onclose = null;
      socket.close();
    }
    this._setState('closed');
  }

  subscribe(taskId: string): void {
    this._subscriptions.add(taskId);
    this._send({ subscribe: taskId, after: this.resumeFrom(taskId) });
  }

  unsubscribe(taskId: string): void {
    if (this._subscriptions.delete(taskId)) {
      this._send({ unsubscribe: taskId });
    }
  }

  /** Reconnect now instead of waiting for the back-off (the user pressed "Reconnect"). */
  reconnectNow(): void {
    if (!this._wanted || this._state === 'open') {
      return;
    }
    this._clearTimer();
    this._attempt = 0;
    this._connect();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this.stop();
    this._disposed = true;
    Signal.clearData(this);
  }

  private _connect(): void {
    if (this._socket) {
      this._socket.onclose = null;
      this._socket.close();
    }
    this._setState('connecting');
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url());
    } catch {
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      this._attempt = 0;
      this._opens += 1;
      this._setState('open');
      for (const taskId of this._subscriptions) {
        this._send({ subscribe: taskId, after: this.resumeFrom(taskId) });
      }
      if (this._opens > 1) {
        this._reconnected.emit();
      }
    };
    socket.onmessage = event => {
      let message: StreamMessage;
      try {
        message = JSON.parse(String(event.data));
      } catch {
        return; // not ours to understand; the server only sends JSON
      }
      if (message && typeof message === 'object' && typeof message.type === 'string') {
        this._message.emit(message);
      }
    };
    socket.onclose = () => {
      if (this._socket === socket) {
        this._socket = null;
      }
      this._setState('closed');
      this._scheduleReconnect();
    };
    socket.onerror = () => {
      // onclose follows and schedules the reconnect
    };
  }

  private _scheduleReconnect(): void {
    if (!this._wanted || this._disposed) {
      return;
    }
    this._clearTimer();
    const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this._attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this._attempt += 1;
    this._timer = window.setTimeout(() => {
      this._timer = null;
      this._connect();
    }, delay);
  }

  private _clearTimer(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _send(payload: object): void {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) {
      this._socket.send(JSON.stringify(payload));
    }
  }

  private _setState(state: ConnectionState): void {
    if (this._state !== state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _socket: WebSocket | null = null;
  private _timer: number | null = null;
  private _attempt = 0;
  private _opens = 0;
  private _wanted = false;
  private _disposed = false;
  private _state: ConnectionState = 'closed';
  private _subscriptions = new Set<string>();
  private _message = new Signal<this, StreamMessage>(this);
  private _stateChanged = new Signal<this, ConnectionState>(this);
  private _reconnected = new Signal<this, void>(this);
}

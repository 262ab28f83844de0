/**
 * The REST client for the server extension's /hivemind/api. The panel talks to nothing else.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { TaskState } from './states';
import {
  IEventPage,
  IPoolStatus,
  IResult,
  ISession,
  ISubmitRequest,
  ISubmitted,
  ITask,
  ITaskPage,
  IWorker
} from './types';

/** An API call that failed: `status` is the HTTP status, 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The server extension itself is missing or not enabled. */
  get extensionMissing(): boolean {
    return this.status === 404 && this.message.startsWith('The HiveMind server extension');
  }
}

export const API_ROOT = 'hivemind/api';

export class HiveMindApi {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  getSession(): Promise<ISession> {
    return this.request<ISession>('session');
  }

  signIn(username: string, password: string, pool?: string): Promise<ISession> {
    const body: { [key: string]: string } = { username, password };
    if (pool) {
      body.pool = pool;
    }
    return this.request<ISession>('session', { method: 'POST', body: JSON.stringify(body) });
  }

  /** Forgets the pool credential (204, no body). */
  async signOut(): Promise<void> {
    await this.request<void>('session', { method: 'DELETE' });
  }

  listTasks(options: { states?: TaskState[]; limit?: number; pageToken?: string } = {}): Promise<ITaskPage> {
    const query = new URLSearchParams();
    for (const state of options.states ?? []) {
      query.append('state', state);
    }
    if (options.limit) {
      query.set('limit', String(options.limit));
    }
    if (options.pageToken) {
      query.set('page_token', options.pageToken);
    }
    const text = query.toString();
    return this.request<ITaskPage>('tasks' + (text ? `?${text}` : ''));
  }

  getTask(id: string): Promise<ITask> {
    return this.request<ITask>(`tasks/${encodeURIComponent(id)}`);
  }

  submit(request: ISubmitRequest): Promise<ISubmitted> {
    return this.request<ISubmitted>('tasks', { method: 'POST', body: JSON.stringify(request) });
  }

  cancel(id: string): Promise<ITask> {
    return this.request<ITask>(`tasks/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
  }

  retry(id: string): Promise<ITask> {
    return this.request<ITask>(`tasks/${encodeURIComponent(id)}/retry`, { method: 'POST' });
  }

  fetchResult(id: string): Promise<IResult> {
    return this.request<IResult>(`tasks/${encodeURIComponent(id)}/result`, { method: 'POST' });
  }

  events(id: string, after = 0): Promise<IEventPage> {
    return this.request<IEventPage>(
      `tasks/${encodeURIComponent(id)}/events` + URLExt.objectToQueryString({ after: String(after) })
    );
  }

  async workers(): Promise<IWorker[]> {
    const reply = await this.request<{ workers?: IWorker[] }>('workers');
    return reply.workers ?? [];
  }

  pool(): Promise<IPoolStatus> {
    return this.request<IPoolStatus>('pool');
  }

  /** The WebSocket address of the live stream, with the token when the server uses one. */
  streamUrl(): string {
    let url = URLExt.join(this.settings.wsUrl, API_ROOT, 'stream');
    if (this.settings.token) {
      url += URLExt.objectToQueryString({ token: this.settings.token });
    }
    return url;
  }

  private async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, API_ROOT, path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new ApiError(
        `Jupyter's server cannot be reached (${(error as Error).message}). Check that it is still running.`,
        0
      );
    }
    const text = await response.text();
    let data: any = undefined;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = undefined;
      }
    }
    if (!response.ok) {
      if (data && typeof data.error === 'string') {
        throw new ApiError(data.error, response.status);
      }
      if (response.status === 404 && data === undefined) {
        throw new ApiError(
          'The HiveMind server extension is not answering. Install hivemind-jupyter in the Python ' +
            'environment that runs Jupyter, enable it (jupyter server extension enable hivemind_jupyter) ' +
            'and restart JupyterLab.',
          404
        );
      }
      const reason = (data && (data.message || data.reason)) || response.statusText || 'request failed';
      throw new ApiError(`${reason} (HTTP ${response.status})`, response.status);
    }
    if (data === undefined && text) {
      throw new ApiError('The server answered with something that is not JSON.', response.status);
    }
    return data as T;
  }
}

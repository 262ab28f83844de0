/**
 * The JSON shapes of the server extension's /hivemind/api.
 *
 * Tasks, workers and events are the pool's protobuf messages as MessageToDict writes them:
 * snake_case keys, enum values as names, int64 values as strings, and fields at their default
 * value left out. Every field is therefore optional and int64 fields may be strings.
 */

import { TaskState } from './states';

export type Int64 = string | number;

export type WorkerState =
  | 'WORKER_STATE_UNSPECIFIED'
  | 'WORKER_ONLINE'
  | 'WORKER_DRAINING'
  | 'WORKER_OFFLINE'
  | 'WORKER_LOST'
  | 'WORKER_REVOKED';

export interface IResources {
  cpus?: number;
  memory_bytes?: Int64;
  gpus?: number;
}

export interface IManifest {
  name?: string;
  entry_notebook?: string;
  parameters_json?: string;
  resources?: IResources;
  labels?: { [key: string]: string };
  timeout_seconds?: Int64;
  max_retries?: number;
  /** The first lines of a cell's code (at most 2 KB), for telling tasks apart. */
  code_preview?: string;
}

export interface IStateTransition {
  state?: TaskState;
  at?: number;
  message?: string;
  attempt?: number;
  worker_id?: string;
}

export interface IProgress {
  cells_done?: number;
  cells_total?: number;
}

export interface ITask {
  id: string;
  owner?: string;
  manifest?: IManifest;
  state?: TaskState;
  created_at?: number;
  updated_at?: number;
  timeline?: IStateTransition[];
  attempt?: number;
  retries_used?: number;
  worker_id?: string;
  worker_name?: string;
  pending_reason?: string;
  error?: string;
  traceback?: string;
  result_sha256?: string;
  result_size?: Int64;
  progress?: IProgress;
  retry_of?: string;
  last_event_seq?: Int64;
}

export type EventKind =
  | 'KIND_UNSPECIFIED'
  | 'STATE'
  | 'STDOUT'
  | 'STDERR'
  | 'DISPLAY'
  | 'PROGRESS'
  | 'NOTICE'
  /** `text`: the phase's name (phases.ts); `data_json`: its details */
  | 'PHASE';

export interface ITaskEvent {
  seq?: Int64;
  at?: number;
  kind?: EventKind;
  state?: TaskState;
  text?: string;
  data_json?: string;
  progress?: IProgress;
  attempt?: number;
}

export interface IGpu {
  index?: number;
  name?: string;
  memory_bytes?: Int64;
}

export interface IMachineFacts {
  hostname?: string;
  cpu_cores?: number;
  memory_bytes?: Int64;
  gpus?: IGpu[];
  executors?: string[];
  labels?: { [key: string]: string };
  version?: string;
  platform?: string;
  capacity?: IResources;
  /** Python minor versions it runs tasks with, e.g. "3.11". */
  python_versions?: string[];
  /** Runtime images it has. */
  images?: string[];
}

/** A worker's cache of task environments, from its last heartbeat. */
export interface IEnvironmentCacheStats {
  environments?: number;
  size_bytes?: Int64;
  hits?: Int64;
  builds?: Int64;
  failures?: Int64;
}

export interface IWorker {
  id: string;
  name?: string;
  state?: WorkerState;
  facts?: IMachineFacts;
  capacity?: IResources;
  allocated?: IResources;
  /** Only the signed-in user's own tasks (every task for an admin). */
  running_task_ids?: string[];
  /** Every task it runs, whoever owns it. */
  running_count?: number;
  last_heartbeat_at?: number;
  registered_at?: number;
  join_token_id?: string;
  revoked_at?: number;
  /** Left out until the worker's first heartbeat that reports it. */
  env_cache?: IEnvironmentCacheStats;
}

export interface IPoolStatus {
  workers_online?: number;
  workers_total?: number;
  tasks_by_state?: { [state: string]: number };
  capacity?: IResources;
  allocated?: IResources;
  version?: string;
}

export interface ISession {
  signed_in: boolean;
  user?: string | null;
  admin?: boolean;
  pool?: string | null;
  /** false when the credential is saved but the pool does not answer right now */
  reachable?: boolean;
}

export interface ITaskPage {
  tasks: ITask[];
  next_page_token?: string;
  total?: number;
}

export interface IEventPage {
  events: ITaskEvent[];
  last_seq?: Int64;
}

export interface IResult {
  folder: string;
  notebook?: string;
  files?: string[];
  /** Names that could not be kept as the task wrote them (this filesystem cannot hold them). */
  renamed?: { from: string; to: string }[];
}

/** POST /hivemind/api/tasks's answer: the task, and what the packer left out as secrets. */
export interface ISubmitted extends ITask {
  left_out?: string[];
  /** One line for the user, e.g. "left out as secrets: .env. To send one on purpose, ..." ('' if none). */
  notice?: string;
}

/** What the submit dialog sends to POST /hivemind/api/tasks. */
export interface ISubmitRequest {
  path: string;
  entry?: string;
  name?: string;
  cpus?: number;
  memory?: string;
  gpus?: number;
  parameters?: { [key: string]: unknown };
  timeout?: string;
  labels?: { [key: string]: string };
  /** pip requirement lines, sent as the bundle's requirements.txt */
  requirements?: string;
  /** auto, freeze, none, requirements or image; absent: the notebook's kernel decides */
  environment?: string;
  /** with environment "image": an image the worker's admin allow-listed */
  image?: string;
  /** run only where this Python version is available, e.g. "3.12" */
  python?: string;
}

/** What POST /hivemind/api/tasks answers: the task, and lines about its environment. */
export interface ISubmitted extends ITask {
  notices?: string[];
  notice?: string;
}

/** Messages the server pushes on the /hivemind/api/stream WebSocket. */
export type StreamMessage =
  | { type: 'task'; task: ITask }
  | { type: 'event'; task_id: string; event: ITaskEvent }
  | { type: 'error'; error: string; status?: number }
  | { type: string; [key: string]: unknown };

/** int64 fields arrive as strings; everything else that counts is a number. */
export function toNumber(value: Int64 | undefined): number {
  if (value === undefined || value === null || value === '') {
    return 0;
  }
  const n = typeof value === 'number' ? value : Number(value);
  return Number.isFinite(n) ? n : 0;
}

import * as React from 'react';

import { WORKER_LABELS, formatAgo, formatBytes, formatEnvCache, formatPythons } from '../format';
import { HiveMindModel } from '../model';
import { IWorker, toNumber } from '../types';
import { Message, onListKeyDown, useTicker } from './common';

/** "free of total" with a bar; `format` writes one amount. */
function Meter(props: {
  label: string;
  used: number;
  total: number;
  format: (n: number) => string;
}): JSX.Element {
  const { used, total } = props;
  const free = Math.max(0, total - used);
  const fraction = total > 0 ? Math.min(1, used / total) : 0;
  return (
    <div className="jp-HiveMind-meter" data-resource={props.label}>
      <span className="jp-HiveMind-meterLabel">{props.label}</span>
      <span
        className="jp-HiveMind-meterBar"
        role="meter"
        aria-label={`${props.label} in use`}
        aria-valuemin={0}
        aria-valuemax={total}
        aria-valuenow={used}
      >
        <span style={{ width: `${Math.round(fraction * 100)}%` }} />
      </span>
      <span className="jp-HiveMind-meterText">
        {props.format(free)} free of {props.format(total)}
      </span>
    </div>
  );
}

function WorkerCard(props: { worker: IWorker; now: number }): JSX.Element {
  const { worker, now } = props;
  const capacity = worker.capacity ?? worker.facts?.capacity ?? {};
  const allocated = worker.allocated ?? {};
  const state = worker.state ?? 'WORKER_STATE_UNSPECIFIED';
  const running = worker.running_count ?? (worker.running_task_ids ?? []).length;
  const gpuNames = (worker.facts?.gpus ?? []).map(g => g.name).filter(Boolean);
  const count = (n: number) => String(Math.round(n * 100) / 100);
  const pythons = formatPythons(worker.facts?.python_versions);
  const envCache = formatEnvCache(worker.env_cache);
  return (
    <li className="jp-HiveMind-workerCard" data-worker-id={worker.id} data-state={state} tabIndex={0}>
      <div className="jp-HiveMind-rowTop">
        <span className="jp-HiveMind-workerName">{worker.name || worker.facts?.hostname || worker.id}</span>
        <span className={`jp-HiveMind-workerState jp-HiveMind-${state.toLowerCase()}`}>
          {WORKER_LABELS[state] ?? state}
        </span>
      </div>
      <Meter label="CPU" used={allocated.cpus ?? 0} total={capacity.cpus ?? 0} format={count} />
      <Meter
        label="Memory"
        used={toNumber(allocated.memory_bytes)}
        total={toNumber(capacity.memory_bytes)}
        format={formatBytes}
      />
      {(capacity.gpus ?? 0) > 0 && (
        <Meter label="GPU" used={allocated.gpus ?? 0} total={capacity.gpus ?? 0} format={count} />
      )}
      {gpuNames.length > 0 && <div className="jp-HiveMind-dim">{gpuNames.join(', ')}</div>}
      {(pythons || envCache) && (
        <div className="jp-HiveMind-dim jp-HiveMind-workerEnvs">
          {pythons && (
            <span className="jp-HiveMind-workerPython" title="Python versions tasks can ask for">
              {pythons}
            </span>
          )}
          {envCache && (
            <span
              className="jp-HiveMind-workerEnvCache"
              title="Task environments kept on the worker: how many, their size, how often one was reused"
            >
              {envCache}
            </span>
          )}
        </div>
      )}
      <div className="jp-HiveMind-rowBottom">
        <span className="jp-HiveMind-running">
          {running} running {running === 1 ? 'task' : 'tasks'}
        </span>
        <span className="jp-HiveMind-heartbeat">heartbeat {formatAgo(worker.last_heartbeat_at, now)}</span>
      </div>
    </li>
  );
}

export function PoolView(props: { model: HiveMindModel }): JSX.Element {
  const { model } = props;
  const now = useTicker(model.workers.length > 0, 5000);
  const status = model.poolStatus;

  let body: JSX.Element;
  if (model.poolError && !model.workers.length) {
    body = (
      <Message
        kind="error"
        title="The pool could not be reached."
        action={{ label: 'Try again', onClick: () => void model.refreshPool() }}
      >
        {model.poolError}
      </Message>
    );
  } else if (!model.poolLoadedAt) {
    body = <Message kind="info" title="Loading the pool…" />;
  } else if (!model.workers.length) {
    body = (
      <Message kind="empty" title="No workers have joined this pool yet.">
        Tasks wait in the queue until a machine joins. A lab admin creates a join token with{' '}
        <code>hivemind-nodepool join-token create</code>, then runs{' '}
        <code>hivemind-worker run --pool HOST:PORT --join-token TOKEN</code> on each machine.
      </Message>
    );
  } else {
    body = (
      <ul
        className="jp-HiveMind-workers"
        aria-label="Workers"
        onKeyDown={e => onListKeyDown(e, '.jp-HiveMind-workerCard')}
      >
        {model.workers.map(worker => (
          <WorkerCard key={worker.id} worker={worker} now={now} />
        ))}
      </ul>
    );
  }

  return (
    <div className="jp-HiveMind-pool">
      <div className="jp-HiveMind-toolbar">
        <span className="jp-HiveMind-count">
          {status
            ? `${status.workers_online ?? 0} of ${status.workers_total ?? 0} workers online`
            : 'Workers'}
        </span>
        <button
          type="button"
          className="jp-mod-styled jp-HiveMind-secondary"
          disabled={model.poolLoading}
          onClick={() => void model.refreshPool()}
        >
          Refresh
        </button>
      </div>
      {status && status.tasks_by_state && Object.keys(status.tasks_by_state).length > 0 && (
        <p className="jp-HiveMind-dim jp-HiveMind-poolTasks">
          {Object.entries(status.tasks_by_state)
            .map(([state, n]) => `${n} ${state.toLowerCase().replace('_', ' ')}`)
            .join(' · ')}
        </p>
      )}
      {model.poolError && model.workers.length > 0 && (
        <p className="jp-HiveMind-error" role="alert">
          {model.poolError}
        </p>
      )}
      {body}
    </div>
  );
}

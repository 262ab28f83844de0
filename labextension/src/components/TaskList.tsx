import * as React from 'react';

import { STATE_LABELS, elapsed, formatResources, formatSubmitted, formatTime, taskName } from '../format';
import { HiveMindModel, TaskFilter } from '../model';
import { ALL_STATES, isTerminal } from '../states';
import { ITask } from '../types';
import { Message, StateBadge, onListKeyDown, useTicker } from './common';

/** One row; memoised so a live update of one task re-renders one row, not the page. */
const TaskRow = React.memo(function TaskRow(props: {
  task: ITask;
  now: number;
  onOpen: (id: string) => void;
}): JSX.Element {
  const { task, now } = props;
  const name = taskName(task);
  return (
    <li className="jp-HiveMind-taskRow" data-task-id={task.id} data-state={task.state}>
      <button
        type="button"
        className="jp-HiveMind-rowButton"
        onClick={() => props.onOpen(task.id)}
        title={`${name}\nsubmitted ${formatTime(task.created_at)}`}
      >
        <span className="jp-HiveMind-rowTop">
          <span className="jp-HiveMind-taskName">{name}</span>
          <StateBadge state={task.state} />
        </span>
        <span className="jp-HiveMind-rowBottom">
          <span className="jp-HiveMind-submitted" title="submitted">
            {formatSubmitted(task.created_at, now)}
          </span>
          <span className="jp-HiveMind-elapsed">{elapsed(task, now)}</span>
          <span className="jp-HiveMind-resources">{formatResources(task.manifest?.resources)}</span>
          {task.worker_name && <span className="jp-HiveMind-worker">on {task.worker_name}</span>}
        </span>
      </button>
    </li>
  );
});

function filterLabel(filter: TaskFilter): string {
  if (filter === 'active') {
    return 'Active';
  }
  if (filter === 'finished') {
    return 'Finished';
  }
  return filter ? STATE_LABELS[filter] : 'All';
}

export function TaskList(props: { model: HiveMindModel }): JSX.Element {
  const { model } = props;
  const live = model.tasks.some(t => !isTerminal(t.state));
  const now = useTicker(live);
  const open = React.useCallback((id: string) => void model.select(id), [model]);

  let body: JSX.Element;
  if (model.tasksError && !model.tasks.length) {
    body = (
      <Message
        kind="error"
        title="Your tasks could not be loaded."
        action={{ label: 'Try again', onClick: () => void model.reloadTasks() }}
      >
        {model.tasksError}
      </Message>
    );
  } else if (!model.tasks.length && model.tasksLoading) {
    body = <Message kind="info" title="Loading your tasks…" />;
  } else if (!model.tasks.length) {
    body = model.filter ? (
      <Message
        kind="empty"
        title={`No ${filterLabel(model.filter).toLowerCase()} tasks.`}
        action={{ label: 'Show all tasks', onClick: () => model.setFilter('') }}
      />
    ) : (
      <Message kind="empty" title="No tasks yet.">
        Right-click a notebook or folder in the file browser and choose <b>Run on HiveMind</b>, use the
        HiveMind button in a notebook's toolbar, or put <code>%%hivemind</code> on top of a cell.
      </Message>
    );
  } else {
    body = (
      <>
        <ul
          className="jp-HiveMind-taskList"
          aria-label="My tasks"
          onKeyDown={e => onListKeyDown(e, '.jp-HiveMind-rowButton')}
        >
          {model.tasks.map(task => (
            <TaskRow key={task.id} task={task} now={isTerminal(task.state) ? 0 : now} onOpen={open} />
          ))}
        </ul>
        {model.tasksError && (
          <p className="jp-HiveMind-error" role="alert">
            {model.tasksError}
          </p>
        )}
        {model.nextPageToken && (
          <button
            type="button"
            className="jp-mod-styled jp-HiveMind-secondary jp-HiveMind-more"
            disabled={model.tasksLoading}
            onClick={() => void model.loadMore()}
          >
            {model.tasksLoading ? 'Loading…' : `Show more (${model.tasks.length} of ${model.total})`}
          </button>
        )}
      </>
    );
  }

  return (
    <div className="jp-HiveMind-tasks">
      <div className="jp-HiveMind-toolbar">
        <label className="jp-HiveMind-filter" title="Show the tasks in this state">
          <select
            className="jp-mod-styled"
            value={model.filter}
            aria-label="Filter tasks by state"
            onChange={e => model.setFilter(e.target.value as TaskFilter)}
          >
            <option value="">All</option>
            <option value="active">Active</option>
            <option value="finished">Finished</option>
            {ALL_STATES.map(state => (
              <option key={state} value={state}>
                {STATE_LABELS[state]}
              </option>
            ))}
          </select>
        </label>
        <span className="jp-HiveMind-count" aria-live="polite">
          {model.total} {model.total === 1 ? 'task' : 'tasks'}
        </span>
        <button
          type="button"
          className="jp-mod-styled jp-HiveMind-secondary jp-HiveMind-refresh"
          onClick={() => void model.reloadTasks()}
          title="Load the list again"
          aria-label="Refresh"
        >
          <span aria-hidden="true">↻</span>
        </button>
      </div>
      {body}
    </div>
  );
}

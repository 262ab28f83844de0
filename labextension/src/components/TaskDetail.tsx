import * as React from 'react';

import {
  elapsed,
  formatBytes,
  formatDuration,
  formatResources,
  formatTime,
  stateLabel,
  taskName
} from '../format';
import { HiveMindModel, ILogState } from '../model';
import { phaseDetails, phaseLabel } from '../phases';
import { isTerminal } from '../states';
import { currentPhase, timelineSteps } from '../timeline';
import { ITask, ITaskEvent, toNumber } from '../types';
import { Message, StateBadge, confirmAction, useTicker } from './common';

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g;

function stripAnsi(text: string): string {
  return text.replace(ANSI, '');
}

/** The text one log event adds to the log view. */
function eventText(event: ITaskEvent): string {
  switch (event.kind) {
    case 'STDOUT':
    case 'STDERR':
      return stripAnsi(event.text ?? '');
    case 'STATE':
      return `── ${stateLabel(event.state)}${event.text ? `: ${event.text}` : ''}\n`;
    case 'NOTICE':
      return `── ${event.text ?? ''}\n`;
    case 'PHASE':
      return `── ${phaseLabel(event.text ?? '', phaseDetails(event.data_json))}\n`;
    case 'PROGRESS':
      return '';
    case 'DISPLAY': {
      try {
        const output = JSON.parse(event.data_json ?? '{}');
        if (output.output_type === 'error') {
          return stripAnsi((output.traceback ?? []).join('\n')) + '\n';
        }
        const data = output.data ?? {};
        const text = data['text/plain'];
        const kinds = Object.keys(data).filter(k => k !== 'text/plain');
        const rich = kinds.length ? `[${kinds.join(', ')} output: open the result notebook to see it]\n` : '';
        return (Array.isArray(text) ? text.join('') : text ? `${text}\n` : '') + rich;
      } catch {
        return '[an output that could not be read]\n';
      }
    }
    default:
      return event.text ?? '';
  }
}

function LogView(props: { log: ILogState }): JSX.Element {
  const { log } = props;
  const ref = React.useRef<HTMLPreElement>(null);
  const [follow, setFollow] = React.useState(true);
  const text = React.useMemo(() => log.events.map(eventText).join(''), [log.events]);

  React.useLayoutEffect(() => {
    if (follow && ref.current) {
      ref.current.scrollTop = ref.current.scrollHeight;
    }
  }, [text, follow]);

  const onScroll = () => {
    const el = ref.current;
    if (el) {
      const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
      if (atBottom !== follow) {
        setFollow(atBottom);
      }
    }
  };

  return (
    <section className="jp-HiveMind-section" aria-label="Log">
      <div className="jp-HiveMind-sectionHead">
        <h3>Log</h3>
        <label className="jp-HiveMind-follow">
          <input type="checkbox" checked={follow} onChange={e => setFollow(e.target.checked)} /> Follow
        </label>
      </div>
      {log.error && (
        <p className="jp-HiveMind-error" role="alert">
          {log.error}
        </p>
      )}
      <pre
        ref={ref}
        className="jp-HiveMind-log"
        tabIndex={0}
        aria-label="Task log"
        aria-live="off"
        onScroll={onScroll}
      >
        {log.dropped > 0 &&
          `… ${log.dropped} earlier lines are not shown here; the result notebook has them\n`}
        {text || (log.loading ? 'Loading the log…' : 'Nothing logged yet.')}
      </pre>
    </section>
  );
}

function Timeline(props: { task: ITask; phases: readonly ITaskEvent[]; now: number }): JSX.Element {
  const steps = timelineSteps(props.task, props.phases, props.now);
  return (
    <section className="jp-HiveMind-section" aria-label="Timeline">
      <h3>Timeline</h3>
      {steps.length ? (
        <ol className="jp-HiveMind-timeline">
          {steps.map((step, i) => {
            const when = step.at ? new Date(step.at * 1000).toISOString() : undefined;
            const duration = step.duration !== undefined && (
              <span className="jp-HiveMind-dim jp-HiveMind-stepDuration">
                {' '}
                {formatDuration(step.duration)}
                {step.ongoing ? ' so far' : ''}
              </span>
            );
            if (step.kind === 'phase') {
              return (
                <li key={i} className="jp-HiveMind-phaseStep" data-phase={step.phase}>
                  <time dateTime={when} title={formatTime(step.at)}>
                    {step.label}
                  </time>
                  {duration}
                </li>
              );
            }
            return (
              <li key={i} data-state={step.state}>
                <StateBadge state={step.state} />
                <time dateTime={when}>{formatTime(step.at)}</time>
                {duration}
                {step.message && <div className="jp-HiveMind-stepMessage">{step.message}</div>}
              </li>
            );
          })}
        </ol>
      ) : (
        <p className="jp-HiveMind-dim">No transitions yet.</p>
      )}
    </section>
  );
}

function Result(props: {
  model: HiveMindModel;
  task: ITask;
  openPath: (path: string) => void;
}): JSX.Element | null {
  const { model, task, openPath } = props;
  const result = model.results.get(task.id);
  if (!isTerminal(task.state) || (!task.result_sha256 && !result)) {
    return null;
  }
  const loading = model.resultLoading === task.id;
  const openNotebook = async () => {
    const fetched = result ?? (await model.fetchResult(task.id));
    if (fetched?.notebook) {
      openPath(fetched.notebook);
    }
  };
  return (
    <section className="jp-HiveMind-section" aria-label="Result">
      <h3>Result</h3>
      <div className="jp-HiveMind-actions">
        <button
          type="button"
          className="jp-mod-styled jp-mod-accept jp-HiveMind-primary jp-HiveMind-openResult"
          disabled={loading}
          onClick={() => void openNotebook()}
        >
          {loading ? 'Fetching…' : 'Open executed notebook'}
        </button>
        {!result && (
          <button
            type="button"
            className="jp-mod-styled jp-HiveMind-secondary"
            disabled={loading}
            onClick={() => void model.fetchResult(task.id)}
          >
            Show output files
          </button>
        )}
      </div>
      {result && (
        <>
          <p className="jp-HiveMind-dim">
            Saved in <code>{result.folder}</code> ({formatBytes(task.result_size)})
          </p>
          {result.renamed && result.renamed.length ? (
            <div className="jp-HiveMind-renamed" role="note">
              <p>
                {result.renamed.length} name{result.renamed.length === 1 ? '' : 's'} could not be kept as the
                task wrote {result.renamed.length === 1 ? 'it' : 'them'} and
                {result.renamed.length === 1 ? ' was' : ' were'} renamed:
              </p>
              <ul>
                {result.renamed.map(item => (
                  <li key={item.from}>
                    <code>{item.from}</code> → <code>{item.to}</code>
                  </li>
                ))}
              </ul>
            </div>
          ) : null}
          {result.files && result.files.length ? (
            <ul className="jp-HiveMind-files" aria-label="Output files">
              {result.files.map(path => (
                <li key={path}>
                  <button type="button" className="jp-HiveMind-link" onClick={() => openPath(path)}>
                    {path.startsWith(result.folder + '/') ? path.slice(result.folder.length + 1) : path}
                  </button>
                </li>
              ))}
            </ul>
          ) : (
            <p className="jp-HiveMind-dim">No output files besides the notebook.</p>
          )}
        </>
      )}
    </section>
  );
}

export function TaskDetail(props: {
  model: HiveMindModel;
  task: ITask | undefined;
  openPath: (path: string) => void;
}): JSX.Element {
  const { model, task, openPath } = props;
  const now = useTicker(!!task && !isTerminal(task.state));
  const backRef = React.useRef<HTMLButtonElement>(null);
  React.useEffect(() => {
    backRef.current?.focus();
  }, [task?.id]);

  const back = () => void model.select('');
  const onKeyDown = (event: React.KeyboardEvent) => {
    if (event.key === 'Escape') {
      event.stopPropagation();
      back();
    }
  };

  const header = (
    <div className="jp-HiveMind-detailHead">
      <button
        ref={backRef}
        type="button"
        className="jp-mod-styled jp-HiveMind-secondary jp-HiveMind-back"
        onClick={back}
      >
        ← My tasks
      </button>
    </div>
  );
  if (!task) {
    return (
      <div className="jp-HiveMind-detail" onKeyDown={onKeyDown}>
        {header}
        {model.actionError ? (
          <Message kind="error" title="This task could not be loaded.">
            {model.actionError}
          </Message>
        ) : (
          <Message kind="info" title="Loading the task…" />
        )}
      </div>
    );
  }
  const terminal = isTerminal(task.state);
  const progress = task.progress;
  const phases = model.log && model.log.taskId === task.id ? model.log.phases : [];
  const phase = currentPhase(task, phases);
  return (
    <div className="jp-HiveMind-detail" onKeyDown={onKeyDown} data-task-id={task.id} data-state={task.state}>
      {header}
      <h2 className="jp-HiveMind-detailTitle">{taskName(task)}</h2>
      <div className="jp-HiveMind-detailState">
        <StateBadge state={task.state} />
        <span className="jp-HiveMind-elapsed">{elapsed(task, now)}</span>
        {phase && <span className="jp-HiveMind-currentPhase">{phase}</span>}
        {(progress?.cells_total ?? 0) > 1 && (!phase || phase === 'running') ? (
          <span className="jp-HiveMind-dim">
            cell {progress?.cells_done ?? 0} of {progress?.cells_total}
          </span>
        ) : null}
      </div>
      <dl className="jp-HiveMind-facts">
        <dt>Resources</dt>
        <dd>{formatResources(task.manifest?.resources)}</dd>
        <dt>Worker</dt>
        <dd>{task.worker_name || '–'}</dd>
        <dt>Submitted</dt>
        <dd>{formatTime(task.created_at)}</dd>
        {toNumber(task.manifest?.timeout_seconds) > 0 && (
          <>
            <dt>Timeout</dt>
            <dd>{formatDuration(toNumber(task.manifest?.timeout_seconds))}</dd>
          </>
        )}
        {(task.retries_used ?? 0) > 0 && (
          <>
            <dt>Retries</dt>
            <dd>{task.retries_used}</dd>
          </>
        )}
        <dt>Task id</dt>
        <dd>
          <code>{task.id}</code>
        </dd>
      </dl>
      {task.manifest?.code_preview && (
        <section className="jp-HiveMind-section" aria-label="Code">
          <h3>Code</h3>
          <pre className="jp-HiveMind-codePreview">{task.manifest.code_preview}</pre>
        </section>
      )}
      {task.state === 'QUEUED' && task.pending_reason && (
        <p className="jp-HiveMind-notice jp-HiveMind-pending" role="status">
          Waiting: {task.pending_reason}
        </p>
      )}
      {task.error && (
        <div className="jp-HiveMind-error jp-HiveMind-taskError" role="alert">
          {task.error}
          {task.traceback && (
            <details>
              <summary>Traceback</summary>
              <pre className="jp-HiveMind-traceback">{stripAnsi(task.traceback)}</pre>
            </details>
          )}
        </div>
      )}
      {model.actionError && (
        <p className="jp-HiveMind-error" role="alert">
          {model.actionError}
        </p>
      )}
      <div className="jp-HiveMind-actions">
        {!terminal && (
          <button
            type="button"
            className="jp-mod-styled jp-mod-warn jp-HiveMind-cancel"
            onClick={async () => {
              const go = await confirmAction(
                'Cancel this task?',
                `${taskName(task)} stops on the pool; what it wrote so far is kept.`,
                'Cancel task'
              );
              if (go) {
                await model.cancel(task.id);
              }
            }}
          >
            Cancel task
          </button>
        )}
        {terminal && (
          <button
            type="button"
            className="jp-mod-styled jp-HiveMind-secondary jp-HiveMind-retry"
            onClick={() => void model.retry(task.id)}
          >
            Run again
          </button>
        )}
      </div>
      <Result model={model} task={task} openPath={openPath} />
      <Timeline task={task} phases={phases} now={now} />
      {model.log && model.log.taskId === task.id && <LogView log={model.log} />}
    </div>
  );
}

import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { STATE_GLYPHS, stateClass, stateLabel } from '../format';
import { TaskState, isTerminal } from '../states';

/** A task's state: a glyph and a word, coloured by the state. */
export function StateBadge(props: { state: TaskState | undefined }): JSX.Element {
  const state = props.state ?? 'TASK_STATE_UNSPECIFIED';
  return (
    <span className={`jp-HiveMind-state ${stateClass(state)}`} data-state={state}>
      <span className={`jp-HiveMind-glyph${isTerminal(state) ? '' : ' jp-HiveMind-live'}`} aria-hidden="true">
        {STATE_GLYPHS[state] ?? '?'}
      </span>
      <span className="jp-HiveMind-stateLabel">{stateLabel(state)}</span>
    </span>
  );
}

/** An empty or error state: what happened and what to do about it. */
export function Message(props: {
  kind: 'empty' | 'error' | 'info';
  title: string;
  children?: React.ReactNode;
  action?: { label: string; onClick: () => void };
}): JSX.Element {
  return (
    <div
      className={`jp-HiveMind-message jp-HiveMind-message-${props.kind}`}
      role={props.kind === 'error' ? 'alert' : 'status'}
    >
      <p className="jp-HiveMind-messageTitle">{props.title}</p>
      {props.children && <div className="jp-HiveMind-messageBody">{props.children}</div>}
      {props.action && (
        <button type="button" className="jp-mod-styled jp-HiveMind-secondary" onClick={props.action.onClick}>
          {props.action.label}
        </button>
      )}
    </div>
  );
}

/** Re-renders its user every `ms` while `active`; one timer per view, not per row. */
export function useTicker(active: boolean, ms = 1000): number {
  const [now, setNow] = React.useState(() => Date.now() / 1000);
  React.useEffect(() => {
    if (!active) {
      return;
    }
    const timer = window.setInterval(() => setNow(Date.now() / 1000), ms);
    return () => window.clearInterval(timer);
  }, [active, ms]);
  return active ? now : Date.now() / 1000;
}

/** Moves focus between the rows of a list with the arrow keys, Home and End. */
export function onListKeyDown(event: React.KeyboardEvent<HTMLElement>, rowSelector: string): void {
  const keys = ['ArrowDown', 'ArrowUp', 'Home', 'End'];
  if (!keys.includes(event.key)) {
    return;
  }
  const rows = Array.from(event.currentTarget.querySelectorAll<HTMLElement>(rowSelector));
  if (!rows.length) {
    return;
  }
  const index = rows.indexOf(document.activeElement as HTMLElement);
  let next = index;
  if (event.key === 'ArrowDown') {
    next = Math.min(rows.length - 1, index + 1);
  } else if (event.key === 'ArrowUp') {
    next = Math.max(0, index - 1);
  } else if (event.key === 'Home') {
    next = 0;
  } else {
    next = rows.length - 1;
  }
  event.preventDefault();
  rows[next].focus();
}

/** Asks before an action that cannot be undone, in JupyterLab's own dialog; true to go ahead. */
export async function confirmAction(title: string, body: string, label: string): Promise<boolean> {
  const result = await showDialog({
    title,
    body,
    buttons: [Dialog.cancelButton({ label: 'Keep' }), Dialog.warnButton({ label })]
  });
  return result.button.accept;
}

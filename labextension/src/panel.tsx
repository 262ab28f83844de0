/**
 * The left-sidebar widget: session header, then the task list or a task's detail, or the pool.
 */
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { Message as LuminoMessage } from '@lumino/messaging';
import * as React from 'react';

import { Message, confirmAction } from './components/common';
import { PoolView } from './components/PoolView';
import { SignIn } from './components/SignIn';
import { TaskDetail } from './components/TaskDetail';
import { TaskList } from './components/TaskList';
import { HiveMindModel, View } from './model';

const CONNECTION_TEXT = {
  open: 'Live',
  connecting: 'Connecting…',
  closed: 'Offline: reconnecting'
};

function Tabs(props: { model: HiveMindModel }): JSX.Element {
  const { model } = props;
  const tabs: { id: View; label: string }[] = [
    { id: 'tasks', label: 'My tasks' },
    { id: 'pool', label: 'Pool' }
  ];
  const onKeyDown = (event: React.KeyboardEvent) => {
    if (event.key === 'ArrowRight' || event.key === 'ArrowLeft') {
      event.preventDefault();
      const next = model.view === 'tasks' ? 'pool' : 'tasks';
      model.setView(next);
      const el = (event.currentTarget as HTMLElement).querySelector<HTMLElement>(`[data-view="${next}"]`);
      el?.focus();
    }
  };
  return (
    <div className="jp-HiveMind-tabs" role="tablist" aria-label="HiveMind views" onKeyDown={onKeyDown}>
      {tabs.map(tab => (
        <button
          key={tab.id}
          type="button"
          role="tab"
          data-view={tab.id}
          aria-selected={model.view === tab.id}
          tabIndex={model.view === tab.id ? 0 : -1}
          className={`jp-HiveMind-tab${model.view === tab.id ? ' jp-mod-active' : ''}`}
          onClick={() => model.setView(tab.id)}
        >
          {tab.label}
        </button>
      ))}
    </div>
  );
}

function PanelBody(props: { model: HiveMindModel; openPath: (path: string) => void }): JSX.Element {
  const { model, openPath } = props;
  const session = model.session;
  let content: JSX.Element;
  if (!session) {
    content = model.sessionError ? (
      <Message
        kind="error"
        title="HiveMind is not available."
        action={{ label: 'Try again', onClick: () => void model.refreshSession() }}
      >
        {model.sessionError}
      </Message>
    ) : (
      <Message kind="info" title="Connecting to HiveMind…" />
    );
  } else if (!session.signed_in) {
    content = <SignIn model={model} />;
  } else {
    content = (
      <>
        {session.reachable === false && (
          <p className="jp-HiveMind-notice" role="status">
            The pool{session.pool ? ` at ${session.pool}` : ''} does not answer right now. Your tasks keep
            running there; this panel catches up when it is back.{' '}
            <button type="button" className="jp-HiveMind-link" onClick={() => void model.refreshSession()}>
              Check again
            </button>
          </p>
        )}
        <Tabs model={model} />
        <div
          className="jp-HiveMind-view"
          role="tabpanel"
          aria-label={model.view === 'pool' ? 'Pool' : 'My tasks'}
        >
          {model.view === 'pool' ? (
            <PoolView model={model} />
          ) : model.selectedId ? (
            <TaskDetail model={model} task={model.selected} openPath={openPath} />
          ) : (
            <TaskList model={model} />
          )}
        </div>
      </>
    );
  }
  return (
    <div className="jp-HiveMind-body">
      <header className="jp-HiveMind-header">
        <h2 className="jp-HiveMind-title">HiveMind</h2>
        {session?.signed_in && (
          <div className="jp-HiveMind-who">
            <span
              className={`jp-HiveMind-connection jp-HiveMind-connection-${model.connection}`}
              title="The live connection to the pool's updates"
              role="status"
            >
              {CONNECTION_TEXT[model.connection]}
            </span>
            {model.connection === 'closed' && (
              <button type="button" className="jp-HiveMind-link" onClick={() => model.stream.reconnectNow()}>
                Reconnect
              </button>
            )}
            <span className="jp-HiveMind-user" title={session.pool ? `pool ${session.pool}` : undefined}>
              {session.user}
              {session.admin ? ' (admin)' : ''}
            </span>
            <button
              type="button"
              className="jp-mod-styled jp-HiveMind-secondary jp-HiveMind-signout"
              onClick={async () => {
                if (
                  await confirmAction(
                    'Sign out of HiveMind?',
                    'Your tasks keep running on the pool.',
                    'Sign out'
                  )
                ) {
                  await model.signOut();
                }
              }}
            >
              Sign out
            </button>
          </div>
        )}
      </header>
      {content}
    </div>
  );
}

export class HiveMindPanel extends ReactWidget {
  constructor(
    readonly model: HiveMindModel,
    private readonly openPath: (path: string) => void
  ) {
    super();
    this.addClass('jp-HiveMind');
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => <PanelBody model={this.model} openPath={this.openPath} />}
      </UseSignal>
    );
  }

  protected onAfterShow(msg: LuminoMessage): void {
    super.onAfterShow(msg);
    this.model.setVisible(true);
  }

  protected onAfterHide(msg: LuminoMessage): void {
    super.onAfterHide(msg);
    this.model.setVisible(false);
  }
}

/**
 * The HiveMind JupyterLab extension: a left-sidebar panel for the lab's pool, and
 * "Run on HiveMind" in the file browser's context menu and the notebook toolbar.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification, ToolbarButton, showErrorMessage } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import { HiveMindApi } from './api';
import { hivemindIcon } from './icons';
import { KernellessPaths } from './kernelless';
import { HiveMindModel, describe } from './model';
import { endNotice, notebookInView, submitNotice } from './notify';
import { HiveMindPanel } from './panel';
import { ISubmitDefaults, notebookParameters, parametersCellSource } from './request';
import { askSubmit } from './submit';
import { ITask } from './types';

const PLUGIN_ID = 'hivemind-jupyter:plugin';

export namespace CommandIDs {
  export const open = 'hivemind:open';
  /** Runs the file browser's selected notebook or folder. */
  export const runSelected = 'hivemind:run-selected';
  /** Runs a path given as `args.path` (with `args.isFolder`), or the current notebook. */
  export const run = 'hivemind:run';
}

/** What the command registry tells callers about commands that take no arguments. */
const NO_ARGS = { args: { type: 'object', properties: {} } };

// the timeout is left to the pool's default_timeout, as a %%hivemind cell without --timeout is
const DEFAULTS: ISubmitDefaults = { cpus: 1, memory: '2G', gpus: 0, timeout: '' };

function readDefaults(settings: ISettingRegistry.ISettings | null): ISubmitDefaults {
  if (!settings) {
    return DEFAULTS;
  }
  const composite = settings.composite as { [key: string]: any };
  const resources = (composite.defaultResources ?? {}) as Partial<ISubmitDefaults>;
  return {
    cpus: typeof resources.cpus === 'number' ? resources.cpus : DEFAULTS.cpus,
    memory: typeof resources.memory === 'string' ? resources.memory : DEFAULTS.memory,
    gpus: typeof resources.gpus === 'number' ? resources.gpus : DEFAULTS.gpus,
    timeout: typeof composite.defaultTimeout === 'string' ? composite.defaultTimeout : DEFAULTS.timeout
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The HiveMind sidebar: run notebooks on the lab pool and watch them live.',
  autoStart: true,
  optional: [ILayoutRestorer, ISettingRegistry, IFileBrowserFactory, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    browserFactory: IFileBrowserFactory | null,
    palette: ICommandPalette | null
  ) => {
    const model = new HiveMindModel(new HiveMindApi());
    // results open without a kernel, after a reload too: the toolbar's kernel picker starts one
    const noKernelPaths = new KernellessPaths(browserStorage(), app.serviceManager.serverSettings.baseUrl);
    const openPath = (path: string) => {
      if (path.endsWith('.ipynb')) {
        noKernelPaths.add(path);
      }
      void app.commands.execute('docmanager:open', { path });
    };
    const panel = new HiveMindPanel(model, openPath);
    panel.id = 'hivemind-sidebar';
    panel.title.icon = hivemindIcon;
    panel.title.caption = 'HiveMind: run notebooks on the lab pool';
    app.shell.add(panel, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(panel, 'hivemind-sidebar');
    }

    let settings: ISettingRegistry.ISettings | null = null;
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          settings = loaded;
          const apply = () => {
            model.setPageSize(Number(loaded.composite.tasksPerPage ?? 50));
            // the browser asks once, when the user opts in (a click in the settings editor)
            if (
              loaded.composite.browserNotifications === true &&
              'Notification' in window &&
              window.Notification.permission === 'default'
            ) {
              void window.Notification.requestPermission();
            }
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason => console.warn('HiveMind: settings could not be loaded', reason));
    }

    void model.refreshSession();

    const openTask = (task: ITask) => {
      app.shell.activateById(panel.id);
      model.setView('tasks');
      void model.select(task.id);
    };
    model.taskEnded.connect((_, task) => {
      const current = app.shell.currentWidget;
      const currentPath = current instanceof NotebookPanel ? current.context.path : undefined;
      if (!document.hidden && notebookInView(task, model.sources.get(task.id), currentPath)) {
        return; // the cell's live view, in front of the user, already says it
      }
      const { kind, message } = endNotice(task);
      Notification.emit(message, kind, {
        autoClose: kind === 'success' ? 8000 : false,
        actions: [
          { label: 'Open', caption: 'Show the task in the HiveMind panel', callback: () => openTask(task) }
        ]
      });
      if (settings?.composite.browserNotifications === true && document.hidden && 'Notification' in window) {
        if (window.Notification.permission === 'granted') {
          const shown = new window.Notification('HiveMind', { body: message, tag: `hivemind-${task.id}` });
          shown.onclick = () => {
            window.focus();
            openTask(task);
          };
        }
      }
    });

    /** The notebook's parameters cell as dialog lines; '' for a folder or an unreadable notebook. */
    const ownParameters = async (path: string, isFolder: boolean): Promise<string> => {
      if (isFolder) {
        return '';
      }
      try {
        const file = await app.serviceManager.contents.get(path, { type: 'notebook', content: true });
        return notebookParameters(parametersCellSource(file.content));
      } catch {
        return '';
      }
    };

    const submit = async (path: string, isFolder: boolean) => {
      if (!model.signedIn) {
        app.shell.activateById(panel.id);
        Notification.warning('Sign in to HiveMind first (in the HiveMind panel), then run it again.', {
          autoClose: 5000
        });
        return;
      }
      const request = await askSubmit(
        path,
        isFolder,
        readDefaults(settings),
        await ownParameters(path, isFolder)
      );
      if (!request) {
        return;
      }
      // a new toast for the outcome: updating the pending one in place does not always repaint
      const pending = Notification.emit(`Sending ${path} to HiveMind…`, 'in-progress', { autoClose: false });
      try {
        const task = await model.api.submit(request);
        Notification.dismiss(pending);
        const environment = (task.notices ?? []).join(' ');
        Notification.success(`${path} is queued on HiveMind.${environment ? ` ${environment}` : ''}`, {
          autoClose: environment ? 8000 : 4000
        });
        const notice = submitNotice(path, task);
        if (notice) {
          // stays until read: it says what the task will not find (toasts are cut; "Details" is whole)
          Notification.warning(notice, {
            autoClose: false,
            actions: [{ label: 'Details', callback: () => void showErrorMessage('Run on HiveMind', notice) }]
          });
        }
        app.shell.activateById(panel.id);
        model.sources.set(task.id, path);
        await model.adopt(task);
      } catch (error) {
        Notification.dismiss(pending);
        const message = `HiveMind did not accept ${path}: ${describe(error)}`;
        // toasts are cut at 140 characters; "Details" shows the whole message
        Notification.error(message, {
          autoClose: false,
          actions: [{ label: 'Details', callback: () => void showErrorMessage('Run on HiveMind', message) }]
        });
      }
    };

    app.commands.addCommand(CommandIDs.open, {
      label: 'Open the HiveMind panel',
      describedBy: NO_ARGS,
      icon: hivemindIcon,
      execute: () => app.shell.activateById(panel.id)
    });

    const selectedItem = () => {
      const browser = browserFactory?.tracker.currentWidget;
      if (!browser) {
        return undefined;
      }
      const items = Array.from(browser.selectedItems());
      return items.length === 1 ? items[0] : undefined;
    };

    app.commands.addCommand(CommandIDs.runSelected, {
      label: 'Run on HiveMind',
      caption: 'Run this notebook or folder on the lab pool',
      describedBy: NO_ARGS,
      icon: hivemindIcon,
      isVisible: () => {
        const item = selectedItem();
        return !!item && (item.type === 'notebook' || item.type === 'directory');
      },
      execute: async () => {
        const item = selectedItem();
        if (item) {
          await submit(item.path, item.type === 'directory');
        }
      }
    });

    app.commands.addCommand(CommandIDs.run, {
      label: 'Run Notebook on HiveMind',
      caption: 'Run the current notebook on the lab pool',
      describedBy: {
        args: {
          type: 'object',
          properties: {
            path: {
              type: 'string',
              description: 'The notebook or folder to run; the current notebook if left out'
            },
            isFolder: { type: 'boolean', description: 'Whether the path is a folder to run as one task' }
          }
        }
      },
      icon: hivemindIcon,
      execute: async args => {
        let path = typeof args.path === 'string' ? args.path : '';
        const isFolder = args.isFolder === true;
        if (!path) {
          const current = app.shell.currentWidget;
          if (current instanceof NotebookPanel) {
            if (current.context.model.dirty) {
              await current.context.save();
            }
            path = current.context.path;
          }
        }
        if (!path) {
          Notification.warning('Open a notebook first, or right-click one in the file browser.');
          return;
        }
        await submit(path, isFolder);
      }
    });

    app.contextMenu.addItem({
      command: CommandIDs.runSelected,
      selector: '.jp-DirListing-item[data-isdir]',
      rank: 3
    });

    app.docRegistry.addWidgetExtension('Notebook', new RunButtonExtension(app, submit, noKernelPaths));

    if (palette) {
      palette.addItem({ command: CommandIDs.open, category: 'HiveMind' });
      palette.addItem({ command: CommandIDs.run, category: 'HiveMind' });
    }
  }
};

/** The notebook toolbar's "Run on HiveMind" button; saves the notebook first. */
class RunButtonExtension implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly submit: (path: string, isFolder: boolean) => Promise<void>,
    private readonly noKernel: KernellessPaths
  ) {}

  createNew(panel: NotebookPanel, context: DocumentRegistry.IContext<INotebookModel>): IDisposable {
    const path = context.path;
    if (this.noKernel.has(path)) {
      // created before the context loads, so the session starts with this preference; the same
      // for the tab the layout restorer re-opens after a reload
      panel.sessionContext.kernelPreference = {
        ...panel.sessionContext.kernelPreference,
        shouldStart: false,
        autoStartDefault: false
      };
      // closed by the user (a page reload disposes nothing): opened again later, it is a notebook
      panel.disposed.connect(() => this.noKernel.delete(path));
    }
    const button = new ToolbarButton({
      className: 'jp-HiveMind-toolbarRun',
      icon: hivemindIcon,
      label: 'HiveMind',
      tooltip: 'Run this notebook on HiveMind',
      onClick: async () => {
        try {
          if (context.model.dirty) {
            await context.save();
          }
          await this.submit(context.path, false);
        } catch (error) {
          Notification.error(`HiveMind: ${describe(error)}`);
        }
      }
    });
    panel.toolbar.insertItem(10, 'hivemind-run', button);
    void this.app;
    return new DisposableDelegate(() => button.dispose());
  }
}

/** The browser's local storage, or null where the page may not use it. */
function browserStorage(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

export default plugin;

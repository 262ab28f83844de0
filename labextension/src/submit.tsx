/**
 * The "Run on HiveMind" dialog: resources, parameters and timeout for a notebook or a folder.
 */
import { Dialog, ReactWidget, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { ISubmitDefaults, ISubmitForm, buildRequest } from './request';
import { ISubmitRequest } from './types';

const ENVIRONMENT_HINTS: { [mode: string]: string } = {
  '': "The kernel's packages when its kernel is this server's Python; else the folder's requirements.txt.",
  auto: "The packages the notebook imports, at the versions installed in this server's Python.",
  freeze: "Every package of this server's Python (slower to build the first time).",
  requirements: 'Only the lines below; unpinned names get the versions the worker finds.',
  image: "The image's own packages.",
  none: 'Only what the runtime has (papermill, ipykernel).'
};

class SubmitBody extends ReactWidget implements Dialog.IBodyWidget<ISubmitForm> {
  constructor(
    private form: ISubmitForm,
    private readonly target: string,
    private readonly isFolder: boolean,
    private readonly error: string
  ) {
    super();
    this.addClass('jp-HiveMind-submit');
  }

  getValue(): ISubmitForm {
    return { ...this.form };
  }

  protected render(): JSX.Element {
    return (
      <SubmitFields
        initial={this.form}
        target={this.target}
        isFolder={this.isFolder}
        error={this.error}
        onChange={form => (this.form = form)}
      />
    );
  }
}

function SubmitFields(props: {
  initial: ISubmitForm;
  target: string;
  isFolder: boolean;
  error: string;
  onChange: (form: ISubmitForm) => void;
}): JSX.Element {
  const [form, setForm] = React.useState(props.initial);
  const set =
    (key: keyof ISubmitForm) =>
    (e: React.ChangeEvent<HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement>) => {
      const next = { ...form, [key]: e.target.value };
      setForm(next);
      props.onChange(next);
    };
  const field = (key: keyof ISubmitForm, label: string, hint: string, extra: object = {}) => (
    <label className="jp-HiveMind-field">
      <span>{label}</span>
      <input className="jp-mod-styled" name={key} value={form[key]} onChange={set(key)} {...extra} />
      <small>{hint}</small>
    </label>
  );
  const textArea = (
    key: keyof ISubmitForm,
    label: string,
    rows: number,
    placeholder: string,
    hint: string
  ) => (
    <label className="jp-HiveMind-field">
      <span>{label}</span>
      <textarea
        className="jp-mod-styled"
        name={key}
        rows={rows}
        value={form[key]}
        placeholder={placeholder}
        onChange={set(key)}
      />
      <small>{hint}</small>
    </label>
  );
  return (
    <div className="jp-HiveMind-submitForm">
      <p>
        Runs <code>{props.target}</code>
        {props.isFolder ? ' (the folder and its files)' : ' with its folder'} on the pool. Files matched by
        .hivemindignore or .gitignore are left out.
      </p>
      {props.error && (
        <p className="jp-HiveMind-error" role="alert">
          {props.error}
        </p>
      )}
      {field('name', 'Name', 'Shown in the task list; empty: the notebook name.', { autoFocus: true })}
      {props.isFolder &&
        field(
          'entry',
          'Entry notebook',
          'The notebook to run inside the folder; empty: the only or main one.'
        )}
      <div className="jp-HiveMind-fieldRow">
        {field('cpus', 'CPUs', 'e.g. 2 or 0.5', { inputMode: 'decimal' })}
        {field('memory', 'Memory', 'e.g. 4G')}
        {field('gpus', 'GPUs', 'whole GPUs', { inputMode: 'numeric' })}
      </div>
      {field('timeout', 'Timeout', 'e.g. 30m or 2h; empty: the pool default.')}
      {textArea(
        'parameters',
        'Parameters',
        3,
        'alpha=0.5\nname="run 1"',
        form.notebookParameters
          ? "The notebook's parameters cell, editable: changed lines are sent (papermill)."
          : "One name=value per line, set in the notebook's parameters cell (papermill)."
      )}
      <label className="jp-HiveMind-field">
        <span>Environment</span>
        <select
          className="jp-mod-styled"
          name="environment"
          value={form.environment}
          onChange={set('environment')}
        >
          <option value="">From the notebook&apos;s kernel</option>
          <option value="auto">What it imports, pinned as installed here</option>
          <option value="freeze">Every package installed here</option>
          <option value="requirements">The requirements below</option>
          <option value="image">An image</option>
          <option value="none">None: the bare runtime</option>
        </select>
        <small>{ENVIRONMENT_HINTS[form.environment] ?? ''}</small>
      </label>
      {form.environment === 'image' &&
        field('image', 'Image', "An image the worker's admin allows, e.g. lab/analysis:2024.")}
      {textArea(
        'requirements',
        'Requirements',
        2,
        'pandas==2.2.2\nscikit-learn',
        'pip lines installed before it runs (with "The requirements below").'
      )}
    </div>
  );
}

/**
 * Asks for the task's settings; returns the request, or null when the user cancels. Invalid
 * input reopens the dialog with what was typed and what is wrong.
 */
export async function askSubmit(
  path: string,
  isFolder: boolean,
  defaults: ISubmitDefaults,
  ownParameters = ''
): Promise<ISubmitRequest | null> {
  let form: ISubmitForm = {
    name: '',
    entry: '',
    cpus: String(defaults.cpus),
    memory: defaults.memory,
    gpus: String(defaults.gpus),
    timeout: defaults.timeout,
    parameters: ownParameters,
    requirements: '',
    environment: '',
    image: '',
    notebookParameters: ownParameters
  };
  let error = '';
  for (;;) {
    const result = await showDialog<ISubmitForm>({
      title: `Run ${isFolder ? 'folder' : 'notebook'} on HiveMind`,
      body: new SubmitBody(form, path, isFolder, error),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run on HiveMind' })],
      focusNodeSelector: 'input[name="name"]'
    });
    if (!result.button.accept || result.value === null) {
      return null;
    }
    form = result.value;
    try {
      return buildRequest(path, isFolder, form);
    } catch (e) {
      error = (e as Error).message;
    }
  }
}

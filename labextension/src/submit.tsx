/**
 * The "Run on HiveMind" dialog: resources, parameters and timeout for a notebook or a folder.
 */
import { Dialog, ReactWidget, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { ISubmitRequest } from './types';

export interface ISubmitDefaults {
  cpus: number;
  memory: string;
  gpus: number;
  timeout: string;
}

export interface ISubmitForm {
  name: string;
  entry: string;
  cpus: string;
  memory: string;
  gpus: string;
  timeout: string;
  parameters: string;
}

const SIZE = /^\d+(\.\d+)?\s*([kmgt]i?b?|b)?$/i;
const DURATION = /^(\d+(\.\d+)?\s*(s|m|h|d)\s*)+$|^\d+$/i;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Reads `name=value` lines; values are JSON when they parse as JSON, text otherwise. */
export function parseParameters(text: string): { [key: string]: unknown } {
  const parameters: { [key: string]: unknown } = {};
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) {
      return;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) {
      throw new Error(`Parameter line ${index + 1} should look like name=value.`);
    }
    const name = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (!IDENTIFIER.test(name)) {
      throw new Error(`"${name}" is not a Python variable name (line ${index + 1}).`);
    }
    if (name in parameters) {
      throw new Error(`The parameter "${name}" is given twice.`);
    }
    try {
      parameters[name] = JSON.parse(value);
    } catch {
      parameters[name] = value;
    }
  });
  return parameters;
}

/** Checks the form and builds the request, or throws an Error that says what to fix. */
export function buildRequest(path: string, isFolder: boolean, form: ISubmitForm): ISubmitRequest {
  const request: ISubmitRequest = { path };
  const name = form.name.trim();
  if (name.length > 200) {
    throw new Error('The name is too long (at most 200 characters).');
  }
  if (name) {
    request.name = name;
  }
  const entry = form.entry.trim();
  if (isFolder && entry) {
    if (!entry.endsWith('.ipynb') || entry.startsWith('/') || entry.split('/').includes('..')) {
      throw new Error('The entry notebook must be a .ipynb path inside the folder.');
    }
    request.entry = entry;
  }
  const cpus = Number(form.cpus);
  if (!form.cpus.trim() || !Number.isFinite(cpus) || cpus <= 0 || cpus > 1024) {
    throw new Error('CPUs must be a number above 0, such as 1 or 0.5.');
  }
  request.cpus = cpus;
  const memory = form.memory.trim();
  if (memory) {
    if (!SIZE.test(memory)) {
      throw new Error('Memory must be a size such as 512M, 4G or 16GiB.');
    }
    request.memory = memory.replace(/\s+/g, '');
  }
  const gpus = Number(form.gpus || '0');
  if (!Number.isInteger(gpus) || gpus < 0 || gpus > 64) {
    throw new Error('GPUs must be a whole number, 0 or more.');
  }
  request.gpus = gpus;
  const timeout = form.timeout.trim();
  if (timeout) {
    if (!DURATION.test(timeout)) {
      throw new Error('The timeout must be a duration such as 30m, 2h or 1h30m.');
    }
    request.timeout = timeout.replace(/\s+/g, '');
  }
  const parameters = parseParameters(form.parameters);
  if (Object.keys(parameters).length) {
    request.parameters = parameters;
  }
  return request;
}

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
  const set = (key: keyof ISubmitForm) => (e: React.ChangeEvent<HTMLInputElement | HTMLTextAreaElement>) => {
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
      <label className="jp-HiveMind-field">
        <span>Parameters</span>
        <textarea
          className="jp-mod-styled"
          name="parameters"
          rows={3}
          value={form.parameters}
          placeholder={'alpha=0.5\nname="run 1"'}
          onChange={set('parameters')}
        />
        <small>One name=value per line, set in the notebook's parameters cell (papermill).</small>
      </label>
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
  defaults: ISubmitDefaults
): Promise<ISubmitRequest | null> {
  let form: ISubmitForm = {
    name: '',
    entry: '',
    cpus: String(defaults.cpus),
    memory: defaults.memory,
    gpus: String(defaults.gpus),
    timeout: defaults.timeout,
    parameters: ''
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

/**
 * What the "Run on HiveMind" dialog sends: the form's fields checked and turned into a request,
 * and the notebook's own parameters read from its `parameters` cell (pure, so it is unit-tested).
 */
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
  requirements: string;
  /** '' (the notebook's kernel decides), or auto, freeze, none, requirements, image */
  environment: string;
  image: string;
  /** The notebook's own parameters, as read from its `parameters` cell: only changes are sent. */
  notebookParameters: string;
}

const SIZE = /^\d+(\.\d+)?\s*([kmgt]i?b?|b)?$/i;
const DURATION = /^(\d+(\.\d+)?\s*(s|m|h|d)\s*)+$|^\d+$/i;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const IMAGE = /^[a-z0-9][a-z0-9._/:@-]{0,254}$/;
export const ENVIRONMENTS = ['', 'auto', 'freeze', 'requirements', 'image', 'none'];

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

const PYTHON_ASSIGNMENT = /^([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]+)?=\s*(.+?)\s*(#.*)?$/;

/** A Python literal as the dialog's JSON text, or undefined for anything else (an expression). */
function pythonLiteral(text: string): string | undefined {
  const words: { [key: string]: string } = { True: 'true', False: 'false', None: 'null' };
  if (text in words) {
    return words[text];
  }
  const single = /^'([^'\\"]*)'$/.exec(text);
  if (single) {
    return JSON.stringify(single[1]);
  }
  try {
    JSON.parse(text);
    return text;
  } catch {
    return undefined;
  }
}

/**
 * The `name=value` lines of a notebook's parameters cell (papermill's defaults), for the dialog.
 * Only plain literals are shown; a line computed from code cannot be set from the dialog.
 */
export function notebookParameters(source: string): string {
  const lines: string[] = [];
  for (const line of source.split('\n')) {
    const match = PYTHON_ASSIGNMENT.exec(line.trim());
    if (!match) {
      continue;
    }
    const value = pythonLiteral(match[2]);
    if (value !== undefined) {
      lines.push(`${match[1]}=${value}`);
    }
  }
  return lines.join('\n');
}

/** The source of the cell tagged `parameters` in a notebook's JSON, or '' when it has none. */
export function parametersCellSource(notebook: unknown): string {
  const cells = (notebook as { cells?: unknown[] } | null)?.cells;
  if (!Array.isArray(cells)) {
    return '';
  }
  for (const cell of cells as { cell_type?: string; metadata?: { tags?: unknown }; source?: unknown }[]) {
    const tags = cell?.metadata?.tags;
    if (cell?.cell_type === 'code' && Array.isArray(tags) && tags.includes('parameters')) {
      return Array.isArray(cell.source) ? cell.source.join('') : String(cell.source ?? '');
    }
  }
  return '';
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
  const defaults = parseParameters(form.notebookParameters);
  for (const key of Object.keys(parameters)) {
    // the notebook's own values need not travel: papermill keeps them when nothing is passed
    if (key in defaults && JSON.stringify(defaults[key]) === JSON.stringify(parameters[key])) {
      delete parameters[key];
    }
  }
  if (Object.keys(parameters).length) {
    request.parameters = parameters;
  }
  addEnvironment(request, form);
  return request;
}

/** The Environment choice, with the requirements or image it needs. */
function addEnvironment(request: ISubmitRequest, form: ISubmitForm): void {
  const environment = form.environment.trim();
  if (!ENVIRONMENTS.includes(environment)) {
    throw new Error(`Unknown environment "${environment}".`);
  }
  const requirements = form.requirements.trim();
  const image = form.image.trim();
  if (environment === 'requirements' && !requirements) {
    throw new Error('Type the requirements to install, one per line (e.g. pandas==2.2.2).');
  }
  if (environment === 'image') {
    if (!IMAGE.test(image)) {
      throw new Error("Name the image to run in (one the worker's admin allows), e.g. lab/analysis:2024.");
    }
    request.image = image;
  }
  if (environment) {
    request.environment = environment;
  }
  if (requirements && (environment === '' || environment === 'requirements')) {
    request.requirements = requirements;
  }
}

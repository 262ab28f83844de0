/**
 * The phases of an attempt on a worker (PHASE events), and how the panel names them.
 *
 * This file mirrors server/hivemind_nodepool/protocol/phases.py: tests/shared/test_phases_mirror.py
 * reads PHASE_LABELS below and fails when it and the Python labels disagree, so keep it a plain
 * object of string literals.
 *
 * fetching -> environment (with requirements only) -> container -> kernel -> running -> uploading
 */

import { formatBytes } from './format';

export const PHASE_LABELS: { [name: string]: string } = {
  fetching: 'fetching the bundle',
  environment: 'building the environment',
  container: 'starting the container',
  kernel: 'starting the kernel',
  running: 'running',
  uploading: 'uploading the result'
};

const MAX_STEP_CHARS = 200;

export type PhaseDetails = { [key: string]: unknown };

/** A PHASE event's details ({} when there are none or they are not a JSON object). */
export function phaseDetails(dataJson: string | undefined): PhaseDetails {
  if (!dataJson) {
    return {};
  }
  try {
    const parsed = JSON.parse(dataJson);
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

/** "fetching the bundle (1.2 MiB)", "building the environment: installing requirements.txt". */
export function phaseLabel(name: string, details: PhaseDetails = {}): string {
  let label = Object.prototype.hasOwnProperty.call(PHASE_LABELS, name) ? PHASE_LABELS[name] : name;
  if (name === 'fetching') {
    const size = details.bytes;
    if (details.cached) {
      label = `${label} (cached)`;
    } else if (typeof size === 'number' && size > 0) {
      label = `${label} (${formatBytes(size)})`;
    }
  } else if (name === 'environment' && details.cached) {
    label = 'reusing the environment';
  } else if (name === 'container' && details.sandbox === 'process') {
    label = "starting the task's process";
  }
  const step = details.step;
  if (typeof step === 'string' && step.trim()) {
    label = `${label}: ${step.trim().slice(0, MAX_STEP_CHARS)}`;
  }
  return label;
}

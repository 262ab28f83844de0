import { endNotice, endedNow, notebookInView, submitNotice } from '../notify';
import { ITask } from '../types';

describe('endedNow', () => {
  it('is true only when an unfinished task reaches an end', () => {
    expect(endedNow('RUNNING', 'SUCCEEDED')).toBe(true);
    expect(endedNow('QUEUED', 'CANCELLED')).toBe(true);
    expect(endedNow('SUCCEEDED', 'SUCCEEDED')).toBe(false);
    expect(endedNow(undefined, 'FAILED')).toBe(false); // first seen finished: old news
    expect(endedNow('QUEUED', 'RUNNING')).toBe(false);
  });
});

describe('endNotice', () => {
  const task = (extra: Partial<ITask>): ITask => ({
    id: 't-1',
    manifest: { name: 'analysis.ipynb [4]' },
    created_at: 100,
    updated_at: 225,
    ...extra
  });
  it('says the outcome, the name and how long', () => {
    expect(endNotice(task({ state: 'SUCCEEDED' }))).toEqual({
      kind: 'success',
      message: 'HiveMind: analysis.ipynb [4] finished after 2m 5s'
    });
  });
  it('gives the first line of an error, cut short', () => {
    const notice = endNotice(task({ state: 'FAILED', error: 'ValueError: bad\nmore' + 'x'.repeat(200) }));
    expect(notice.kind).toBe('error');
    expect(notice.message).toContain('failed after');
    expect(notice.message.endsWith(': ValueError: bad')).toBe(true);
  });
  it('warns of a cancel', () => {
    expect(endNotice(task({ state: 'CANCELLED' })).kind).toBe('warning');
  });
});

describe('notebookInView', () => {
  const cell: ITask = { id: 't', manifest: { name: 'analysis.ipynb [4]' } };
  it('matches a cell task by its notebook name', () => {
    expect(notebookInView(cell, undefined, 'work/analysis.ipynb')).toBe(true);
    expect(notebookInView(cell, undefined, 'work/other.ipynb')).toBe(false);
    expect(notebookInView(cell, undefined, undefined)).toBe(false);
  });
  it('matches a panel task by the path it was sent from', () => {
    const sent: ITask = { id: 't', manifest: { name: 'hello.ipynb' } };
    expect(notebookInView(sent, 'hello.ipynb', 'hello.ipynb')).toBe(true);
    expect(notebookInView(sent, 'hello.ipynb', 'a/hello.ipynb')).toBe(false);
    expect(notebookInView(sent, undefined, 'hello.ipynb')).toBe(false);
  });
});

describe('submitNotice', () => {
  it('says what the packer left out, and nothing when it left nothing out', () => {
    const notice = 'left out as secrets: .env. To send one on purpose, add !NAME to .hivemindignore.';
    expect(submitNotice('project', { id: 't', notice })).toBe(`HiveMind sent project, but ${notice}`);
    expect(submitNotice('project', { id: 't', notice: '' })).toBeNull();
    expect(submitNotice('project', { id: 't' })).toBeNull();
  });
});

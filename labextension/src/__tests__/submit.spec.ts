import { ISubmitForm, buildRequest, notebookParameters, parametersCellSource } from '../request';

const FORM: ISubmitForm = {
  name: '',
  entry: '',
  cpus: '1',
  memory: '2G',
  gpus: '0',
  timeout: '',
  parameters: '',
  requirements: '',
  environment: '',
  image: '',
  notebookParameters: ''
};

describe('notebookParameters', () => {
  it('shows plain literals as name=value lines, in JSON', () => {
    const source = "alpha = 0.5\nname = 'run 1'  # a label\nflag: bool = True\nmissing = None\n";
    expect(notebookParameters(source)).toBe('alpha=0.5\nname="run 1"\nflag=true\nmissing=null');
  });
  it('leaves out what is computed or not an assignment', () => {
    expect(notebookParameters('import numpy as np\ngrid = np.linspace(0, 1)\nn = 3\n')).toBe('n=3');
  });
});

describe('parametersCellSource', () => {
  it('finds the cell tagged parameters', () => {
    const notebook = {
      cells: [
        { cell_type: 'code', metadata: {}, source: 'x = 0' },
        { cell_type: 'code', metadata: { tags: ['parameters'] }, source: ['a = 1\n', 'b = 2'] }
      ]
    };
    expect(parametersCellSource(notebook)).toBe('a = 1\nb = 2');
    expect(parametersCellSource({ cells: [] })).toBe('');
    expect(parametersCellSource(null)).toBe('');
  });
});

describe('buildRequest', () => {
  it("sends only the parameters that differ from the notebook's own", () => {
    const request = buildRequest('a.ipynb', false, {
      ...FORM,
      notebookParameters: 'alpha=0.5\nname="run 1"',
      parameters: 'alpha=0.7\nname="run 1"'
    });
    expect(request.parameters).toEqual({ alpha: 0.7 });
  });
  it('sends requirements when typed, and no timeout by default', () => {
    const request = buildRequest('a.ipynb', false, { ...FORM, requirements: ' pandas\nnumpy==2.0 \n' });
    expect(request.requirements).toBe('pandas\nnumpy==2.0');
    expect(request.timeout).toBeUndefined();
    expect(buildRequest('a.ipynb', false, FORM).requirements).toBeUndefined();
  });
  it('sends the environment chosen, with what it needs', () => {
    expect(buildRequest('a.ipynb', false, FORM).environment).toBeUndefined();
    expect(buildRequest('a.ipynb', false, { ...FORM, environment: 'freeze' }).environment).toBe('freeze');
    const image = buildRequest('a.ipynb', false, { ...FORM, environment: 'image', image: ' lab/x:1 ' });
    expect([image.environment, image.image]).toEqual(['image', 'lab/x:1']);
    const none = buildRequest('a.ipynb', false, { ...FORM, environment: 'none', requirements: 'pandas' });
    expect(none.requirements).toBeUndefined();
    const typed = buildRequest('a.ipynb', false, {
      ...FORM,
      environment: 'requirements',
      requirements: 'pandas'
    });
    expect(typed.requirements).toBe('pandas');
  });
  it('refuses an environment without what it needs', () => {
    expect(() => buildRequest('a.ipynb', false, { ...FORM, environment: 'image' })).toThrow('Name the image');
    expect(() =>
      buildRequest('a.ipynb', false, { ...FORM, environment: 'image', image: 'Bad Name' })
    ).toThrow('Name the image');
    expect(() => buildRequest('a.ipynb', false, { ...FORM, environment: 'requirements' })).toThrow(
      'Type the requirements'
    );
    expect(() => buildRequest('a.ipynb', false, { ...FORM, environment: 'conda' })).toThrow(
      'Unknown environment'
    );
  });
});

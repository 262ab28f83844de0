// Unit tests for the panel's logic (src/__tests__), compiled by ts-jest with tsconfig.test.json.
// The JupyterLab packages are ES modules that jest would have to transpile; the tests that reach
// them (through api.ts) replace them with jest.mock, so node_modules is left untransformed.
module.exports = {
  testEnvironment: 'jsdom',
  roots: ['<rootDir>/src'],
  testRegex: 'src/__tests__/.*\\.spec\\.ts$',
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  },
  collectCoverageFrom: [
    'src/model.ts',
    'src/format.ts',
    'src/stream.ts',
    'src/states.ts',
    'src/types.ts',
    'src/phases.ts',
    'src/timeline.ts'
  ],
  coverageReporters: ['text-summary']
};

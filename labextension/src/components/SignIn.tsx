import * as React from 'react';

import { HiveMindModel } from '../model';

/** The sign-in form shown while there is no credential for the pool. */
export function SignIn(props: { model: HiveMindModel }): JSX.Element {
  const { model } = props;
  const [pool, setPool] = React.useState(model.session?.pool ?? '');
  const [username, setUsername] = React.useState('');
  const [password, setPassword] = React.useState('');
  const userRef = React.useRef<HTMLInputElement>(null);

  React.useEffect(() => {
    userRef.current?.focus();
  }, []);

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    const ok = await model.signIn(username.trim(), password, pool.trim());
    if (!ok) {
      setPassword('');
    }
  };

  const missing = !username.trim() || !password;
  return (
    <form className="jp-HiveMind-signin" onSubmit={submit} aria-label="Sign in to the HiveMind pool">
      <p className="jp-HiveMind-hint">
        Sign in with the account your lab admin created for you on the pool. Your password is sent to the pool
        once; Jupyter keeps only a revocable token.
      </p>
      {model.sessionNotice && (
        <p className="jp-HiveMind-notice" role="status">
          {model.sessionNotice}
        </p>
      )}
      <label>
        <span>Pool address</span>
        <input
          className="jp-mod-styled jp-HiveMind-input"
          name="pool"
          value={pool}
          placeholder="host:50051 (empty: the configured pool)"
          autoComplete="url"
          onChange={e => setPool(e.target.value)}
        />
      </label>
      <label>
        <span>User name</span>
        <input
          ref={userRef}
          className="jp-mod-styled jp-HiveMind-input"
          name="username"
          value={username}
          autoComplete="username"
          required
          onChange={e => setUsername(e.target.value)}
        />
      </label>
      <label>
        <span>Password</span>
        <input
          className="jp-mod-styled jp-HiveMind-input"
          name="password"
          type="password"
          value={password}
          autoComplete="current-password"
          required
          onChange={e => setPassword(e.target.value)}
        />
      </label>
      {model.sessionError && (
        <p className="jp-HiveMind-error" role="alert">
          {model.sessionError}
        </p>
      )}
      <button
        type="submit"
        className="jp-mod-styled jp-mod-accept jp-HiveMind-primary"
        disabled={model.busy || missing}
      >
        {model.busy ? 'Signing in…' : 'Sign in'}
      </button>
    </form>
  );
}

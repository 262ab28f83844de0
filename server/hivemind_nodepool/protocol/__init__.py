"""What every part of HiveMind shares: the wire facts, task states, manifests, bundles, units,
settings layers and the one family of errors. Imports nothing from `client`, `pool` or `cli`."""

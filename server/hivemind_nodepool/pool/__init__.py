"""The NodePool server's internals: store, lifecycle, scheduler, gateway, services and feeds.

Only the pool's own entry points (`hivemind-nodepool serve` and the admin CLI's local mode)
import this; the worker, the Jupyter side and the user CLI talk to it over gRPC."""

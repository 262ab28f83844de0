"""The worker's exceptions: one root, under HiveMind's root error."""

from __future__ import annotations

from hivemind_nodepool.protocol.errors import HiveMindError


class WorkerError(HiveMindError):
    """Something the worker cannot do, with a message that says what to fix."""


class EnvironmentBuildError(WorkerError):
    """A task's requirements could not be installed; the message carries pip's last lines."""


class NoTaskNetwork(WorkerError):
    """A task the pool allows network cannot get one here; the message says how to give it one."""


class Fenced(WorkerError):
    """The pool refused a report: another attempt owns the task now."""


class BuildStopped(WorkerError):
    """The task was stopped (cancel, timeout, drain) while its environment was being built or
    waited for: the build was ended, and nothing of it is kept or remembered as a failure."""

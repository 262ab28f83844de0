"""Where a build's time went: uv's own summary lines, and the builder's steps."""

from __future__ import annotations

import pytest

from hivemind_worker.environments import StepClock
from hivemind_worker.uv import uv_durations

UV_OUTPUT = """Using Python 3.11.2 environment at: /opt/hivemind/venv
Resolved 12 packages in 180ms
Would download 12 packages
::hivemind-install::
Using Python 3.11.2 environment at: /opt/hivemind/venv
Resolved 12 packages in 20ms
Prepared 12 packages in 1.25s
Installed 1 package in 880ms
 + numpy==2.4.6
"""


def test_uv_durations_add_up_its_steps() -> None:
    seconds = uv_durations(UV_OUTPUT)
    assert seconds == pytest.approx(
        {"uv: resolve": 0.2, "uv: download and unpack": 1.25, "uv: install": 0.88}
    )
    assert uv_durations("error: no such package\n") == {}


def test_step_clock_gives_each_step_its_own_time() -> None:
    clock = StepClock()
    clock.lap("create")
    clock.lap("run")
    clock.lap("create")  # a step met again adds up
    assert list(clock.seconds) == ["create", "run"]
    assert all(value >= 0 for value in clock.seconds.values())
    assert clock.text().startswith("create ")

"""The panel with 1,000 tasks in the user's history: first render and live update, measured in the
browser (printed, not asserted: timings on shared machines are noise). Run with `-s` to see them.

The history is made through the pool's own client: 1,000 real submissions that ask for a label no
worker has, 990 of them cancelled, so the pool keeps them as they are and no worker is needed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.pool import PoolProcess

from hivemind_nodepool.client.submission import TaskRequest, package_path

from .conftest import Lab
from .panel_page import SIDEBAR, SOCKET_SPY, PanelPage

pytestmark = [pytest.mark.browser, pytest.mark.slow]

USER, PASSWORD = "bo", "bo-password-1"
HISTORY = 1000
LEFT_QUEUED = 10
ROWS = f"{SIDEBAR} .jp-HiveMind-taskRow"


@pytest.fixture(scope="module")
def history(ui_pool: PoolProcess, ui_tmp: Path, lab: Lab) -> list[str]:
    """Task ids, newest first; the first LEFT_QUEUED are still queued, the rest cancelled."""
    ui_pool.add_user(USER, PASSWORD)
    folder = lab.root / "analysis"
    manifest, packed = package_path(
        folder, TaskRequest(cpus=1, memory="256M", labels={"site": "nowhere"}), workdir=ui_tmp
    )
    ids: list[str] = []
    started = time.perf_counter()
    with ui_pool.login(USER, PASSWORD) as client:
        for i in range(HISTORY):
            manifest.name = f"sweep-{i:04d}"
            ids.append(client.submit(manifest, packed.path).id)
        submitted = time.perf_counter()
        for task_id in ids[: HISTORY - LEFT_QUEUED]:
            client.cancel_task(task_id)
    print(
        f"\nseeded {HISTORY} tasks: submit {submitted - started:.1f} s, "
        f"cancel {HISTORY - LEFT_QUEUED} {time.perf_counter() - submitted:.1f} s"
    )
    return list(reversed(ids))


@pytest.fixture(scope="module")
def panel(browser: Any, lab: Lab, history: list[str]) -> Iterator[PanelPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.add_init_script(SOCKET_SPY)
    context.set_default_timeout(60_000)  # the machines running these are shared and sometimes slow
    page = context.new_page()
    panel = PanelPage(page, lab.url, lab.token)
    panel.open_lab()
    panel.open_panel()
    if page.locator(f"{SIDEBAR} .jp-HiveMind-signout").count():
        panel.sign_out()
    panel.sign_in(USER, PASSWORD)
    page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-signout")
    page.locator(ROWS).first.wait_for()
    try:
        yield panel
    finally:
        context.close()


def _ms(values: list[float]) -> str:
    median = statistics.median(values)
    return f"median {median:.0f} ms (min {min(values):.0f}, max {max(values):.0f}, n={len(values)})"


def test_first_render_with_1000_tasks(panel: PanelPage) -> None:
    page = panel.page
    count = page.locator(f"{SIDEBAR} .jp-HiveMind-count").inner_text()
    assert count.startswith(f"{HISTORY} "), count
    page_size = page.locator(ROWS).count()
    assert page_size < HISTORY, "the list must be paged, not render every task at once"

    # A full page load: navigation start to the first rows (the panel is restored open, or opened
    # by a click when the reload came before JupyterLab saved its layout).
    loads = []
    for _ in range(3):
        panel.open_lab()
        panel.open_panel()
        page.locator(ROWS).first.wait_for(timeout=60_000)
        loads.append(page.evaluate("performance.now()"))

    # The panel alone: from clicking "My tasks" to the first page's rows (rendered from memory).
    switches = []
    for _ in range(5):
        panel.show_view("pool")
        page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-pool")
        page.evaluate(
            """() => {
              const tab = document.querySelector('#hivemind-sidebar [data-view="tasks"]');
              window.__hmClickAt = performance.now();
              tab.click();
            }"""
        )
        page.locator(ROWS).first.wait_for()
        page.wait_for_function(f"!document.querySelector('{SIDEBAR} .jp-HiveMind-message')")
        switches.append(page.evaluate("performance.now() - window.__hmClickAt"))

    # Every page, one "Show more" at a time, until all 1,000 rows are in the list.
    more = []
    while page.locator(f"{SIDEBAR} .jp-HiveMind-more").count():
        before = page.locator(ROWS).count()
        page.evaluate(
            """() => {
              window.__hmClickAt = performance.now();
              document.querySelector('#hivemind-sidebar .jp-HiveMind-more').click();
            }"""
        )
        page.wait_for_function(f"document.querySelectorAll('{ROWS}').length > {before}")
        more.append(page.evaluate("performance.now() - window.__hmClickAt"))
    assert page.locator(ROWS).count() == HISTORY
    print(
        f"\n[panel benchmark] {HISTORY} tasks, {page_size} per page"
        f"\n  page load to first rows (JupyterLab start included): {_ms(loads)}"
        f"\n  'My tasks' click to first page rendered (no fetch):   {_ms(switches)}"
        f"\n  'Show more' click to next page rendered:               {_ms(more)}"
    )


def test_live_update_with_1000_tasks(panel: PanelPage, ui_pool: PoolProcess, history: list[str]) -> None:
    page = panel.page
    queued = history[:LEFT_QUEUED]
    panel.record()
    in_page, end_to_end = [], []
    with ui_pool.login(USER, PASSWORD) as client:
        for task_id in queued[:5]:
            row = f'{ROWS}[data-task-id="{task_id}"]'
            page.wait_for_selector(f'{row}[data-state="QUEUED"]', state="attached")
            started = time.perf_counter()
            client.cancel_task(task_id)
            page.wait_for_selector(f'{row}[data-state="CANCELLED"]', state="attached", timeout=30_000)
            end_to_end.append((time.perf_counter() - started) * 1000)
            timing = page.evaluate(
                """(id) => {
                  const message = window.__hmTaskMessages.find(m => m.id === id && m.state === 'CANCELLED');
                  const change = window.__hmRowChanges.find(c => c.id === id && c.state === 'CANCELLED');
                  return message && change ? change.at - message.at : null;
                }""",
                task_id,
            )
            if timing is not None:
                in_page.append(timing)
    assert in_page, "no WebSocket message was seen before the row changed"
    # a task that cannot be placed says why
    page.locator(f'{ROWS}[data-task-id="{queued[-1]}"] button').click()
    reason = page.locator(f"{SIDEBAR} .jp-HiveMind-pending")
    reason.wait_for()
    assert reason.inner_text().startswith("Waiting: ") and len(reason.inner_text()) > len("Waiting: ")
    print(f"  pending reason shown: {reason.inner_text()!r}")
    panel.back_to_list()
    print(
        f"\n[panel benchmark] live update with {HISTORY} tasks in the list"
        f"\n  WebSocket message to row repainted (the panel's share): {_ms(in_page)}"
        f"\n  cancel RPC to row changed (includes the server's 0.3 s watcher poll): {_ms(end_to_end)}"
    )


def test_pool_down_says_what_to_do_and_recovers(panel: PanelPage, ui_pool: PoolProcess) -> None:
    page = panel.page
    ui_pool.stop()
    try:
        panel.open_lab()
        panel.open_panel()
        notice = page.locator(f"{SIDEBAR} .jp-HiveMind-notice", has_text="does not answer")
        notice.wait_for(timeout=60_000)
        assert ui_pool.address in notice.inner_text()
        error = page.locator(f"{SIDEBAR} .jp-HiveMind-message-error")
        error.wait_for(timeout=60_000)
        assert "could not be loaded" in error.inner_text()
        assert ui_pool.address in error.inner_text(), "the message names the pool's address"
    finally:
        ui_pool.start()
    # back: the panel looks again by itself (backing off), so the list returns without a reload
    # or a click
    page.locator(ROWS).first.wait_for(timeout=60_000)
    assert page.locator(f"{SIDEBAR} .jp-HiveMind-notice").count() == 0

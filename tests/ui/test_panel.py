"""The HiveMind panel in a real browser: real JupyterLab, real pool, real worker, Debian's Chromium.

The tests run in file order, as one person would use the panel: a wrong password, sign in, run a
notebook from the file browser and watch it finish, open its result, cancel a long one from the
notebook toolbar, look at the pool, then take screenshots in both themes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.pool import PoolProcess

from hivemind_nodepool.client.submission import TaskRequest, package_path
from hivemind_nodepool.proto import nodepool_pb2 as pb

from .conftest import PASSWORD, REPO, USER, Lab
from .panel_page import DETAIL, SIDEBAR, SOCKET_SPY, WIDGET_TEXTS, PanelPage

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The committed screenshots are refreshed only on request, so a test run leaves the tree clean:
#   HIVEMIND_UPDATE_SCREENSHOTS=1 .venv/bin/pytest tests/ui -k screenshots
UPDATE_SCREENSHOTS = bool(os.environ.get("HIVEMIND_UPDATE_SCREENSHOTS"))
CURRENT_TAB = "#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current"


@pytest.fixture(scope="module")
def panel(browser: Any, lab: Lab, ui_worker: Any) -> Iterator[PanelPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.add_init_script(SOCKET_SPY)
    context.set_default_timeout(60_000)  # the machines running these are shared and sometimes slow
    page = context.new_page()
    errors: list[str] = []
    # ipywidgets' manager reads `session.kernel` of every notebook, and throws for one opened
    # without a kernel (as results are); that error is not the panel's
    page.on(
        "pageerror",
        lambda error: None if "@jupyter-widgets" in (error.stack or "") else errors.append(str(error)),
    )
    page.on(
        "console",
        lambda message: (
            print(f"[browser {message.type}] {message.text}")
            if message.type in ("error", "warning")
            else None
        ),
    )
    panel = PanelPage(page, lab.url, lab.token)
    panel.open_lab()
    panel.open_panel()
    try:
        yield panel
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_wrong_password_shows_an_error(panel: PanelPage) -> None:
    panel.sign_in(USER, "not-the-password")
    error = panel.page.locator(f"{SIDEBAR} form.jp-HiveMind-signin .jp-HiveMind-error")
    error.wait_for()
    assert "Wrong user name or password" in error.inner_text()
    # still signed out, and the password field was cleared for the next try
    assert panel.page.locator(f'{SIDEBAR} input[name="password"]').input_value() == ""
    assert panel.page.locator(f"{SIDEBAR} .jp-HiveMind-signout").count() == 0


def test_sign_in(panel: PanelPage) -> None:
    panel.sign_in(USER, PASSWORD)
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-signout")
    assert panel.page.locator(f"{SIDEBAR} .jp-HiveMind-user").inner_text().strip() == USER
    # no task yet: the empty state says how to start one
    empty = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-message-empty")
    empty.wait_for()
    assert "Run on HiveMind" in empty.inner_text()
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-connection-open")


def test_submit_from_file_browser_runs_live_to_success(
    panel: PanelPage, lab: Lab, ui_pool: PoolProcess, tmp_path: Path
) -> None:
    # Another user's long task fills the worker first, so this one visibly waits in the queue (a
    # free worker assigns it within milliseconds, faster than a person could see QUEUED).
    admin = ui_pool.admin()
    manifest, packed = package_path(
        lab.root / "slow.ipynb", TaskRequest(cpus=2, memory="256M"), workdir=tmp_path
    )
    blocker = admin.submit(manifest, packed.path)
    deadline = time.monotonic() + 60
    while admin.get_task(blocker.id).state != pb.RUNNING:
        assert time.monotonic() < deadline, "the blocking task did not start"
        time.sleep(0.2)
    panel.page.evaluate("window.__hmSameDocument = true")
    panel.record()
    panel.run_from_file_browser("hello.ipynb", {"cpus": "1", "memory": "512M", "parameters": 'greeting="hi"'})
    try:
        panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-detail[data-task-id]")
        panel.wait_detail_state("QUEUED")
        # while it waits, the panel says why (pushed from the pool within a scheduling cycle)
        reason = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-pending")
        reason.wait_for()
        assert "Waiting:" in reason.inner_text() and "busy" in reason.inner_text().lower()
    finally:  # the module's later tests need the worker free, whatever happened here
        admin.cancel_task(blocker.id)
        admin.close()
    panel.wait_detail_state("SUCCEEDED")
    seen = panel.states_seen()
    assert seen[0] == "QUEUED", seen
    assert "RUNNING" in seen, seen
    assert seen[-1] == "SUCCEEDED", seen
    assert seen.index("QUEUED") < seen.index("RUNNING") < seen.index("SUCCEEDED")
    # the page was never reloaded, and the live log followed the notebook's prints
    assert panel.page.evaluate("window.__hmSameDocument") is True
    panel.page.wait_for_function(
        "document.querySelector('#hivemind-sidebar .jp-HiveMind-log').innerText.includes('hi 3')"
    )
    timeline = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-timeline li")
    assert timeline.count() >= 3
    assert "lab-box" in panel.page.locator(f"{SIDEBAR} .jp-HiveMind-facts").inner_text()
    # The worker's phases reached the page (PHASE events over the server's REST and WebSocket):
    # steps of the timeline, named, under the states they refine, each with its duration.
    phases = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-timeline li.jp-HiveMind-phaseStep")
    panel.page.locator(f'{SIDEBAR} .jp-HiveMind-phaseStep[data-phase="uploading"]').wait_for()
    assert [phases.nth(i).get_attribute("data-phase") for i in range(phases.count())] == [
        "fetching",
        "container",
        "kernel",
        "running",
        "uploading",
    ]
    labels = phases.locator("time").all_inner_texts()
    # (the bundle's label gives its size: "fetching the bundle (1.8 KiB)")
    assert [re.sub(r" \(.*\)$", "", label.strip()) for label in labels] == [
        "fetching the bundle",
        "starting the task's process",
        "starting the kernel",
        "running",
        "uploading the result",
    ], labels
    durations = phases.locator(".jp-HiveMind-stepDuration").all_inner_texts()
    assert len(durations) == 5 and all(re.fullmatch(r"\d+s", d.strip()) for d in durations), durations
    steps = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-timeline li")
    order = [
        steps.nth(i).get_attribute("data-state") or steps.nth(i).get_attribute("data-phase")
        for i in range(steps.count())
    ]
    assert order.index("PREPARING") < order.index("fetching") < order.index("RUNNING")
    assert (
        order.index("RUNNING") < order.index("container") < order.index("running") < order.index("UPLOADING")
    )
    # PREPARING is not labelled with a guess of where its time went: its phases say it
    preparing = panel.page.locator(f'{SIDEBAR} .jp-HiveMind-timeline li[data-state="PREPARING"]')
    assert preparing.locator(".jp-HiveMind-stepMessage").count() == 0


def test_open_result(panel: PanelPage) -> None:
    task_id = panel.page.locator(DETAIL).get_attribute("data-task-id")
    panel.page.click(f"{SIDEBAR} .jp-HiveMind-openResult")
    tab = panel.page.locator(CURRENT_TAB)
    panel.page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
    # the executed notebook is named after its task (not after the notebook it ran)
    assert tab.inner_text().strip() == f"hello - {task_id}.ipynb"
    # the executed notebook holds the outputs of the run
    panel.page.wait_for_selector(".jp-NotebookPanel .jp-OutputArea-output:has-text('hi 3')", timeout=30_000)
    # the panel lists the output files, and they are in the workspace
    files = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-files")
    files.wait_for()
    assert "answer.txt" in files.inner_text()
    # a result opens without a kernel: reading it starts nothing until the user picks one
    kernel = panel.page.locator(".jp-NotebookPanel:visible .jp-KernelName").first
    panel.page.wait_for_function(
        "el => el.innerText.trim() === 'No Kernel'", arg=kernel.element_handle(), timeout=30_000
    )


def test_cancel_a_long_task_from_the_notebook_toolbar(panel: PanelPage) -> None:
    panel.open_file_browser()
    panel.file_item("slow.ipynb").dblclick()
    # the result tab of the test before is a notebook with the same button: wait for this one's
    panel.page.locator(CURRENT_TAB, has_text="slow.ipynb").wait_for(timeout=60_000)
    button = panel.page.locator(".jp-NotebookPanel:visible .jp-HiveMind-toolbarRun").first
    button.wait_for(timeout=60_000)
    button.click()
    panel.fill_dialog({"name": "long sleep", "timeout": "30m"})
    # the panel opens by itself on the new task
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-detail[data-task-id]", state="visible")
    panel.wait_detail_state("RUNNING")
    panel.page.wait_for_function(
        "document.querySelector('#hivemind-sidebar .jp-HiveMind-log').innerText.includes('sleeping')",
        timeout=60_000,
    )
    # Cancel asks first; keeping the task leaves it running
    panel.page.click(f"{SIDEBAR} .jp-HiveMind-cancel")
    ask = panel.page.locator(".jp-Dialog", has_text="Cancel this task?")
    ask.wait_for()
    ask.locator(".jp-Dialog-button.jp-mod-reject").click()
    ask.wait_for(state="detached")
    assert panel.detail_state() == "RUNNING"
    panel.cancel_task()
    panel.wait_detail_state("CANCELLED", timeout=60_000)
    assert panel.page.locator(f"{SIDEBAR} .jp-HiveMind-cancel").count() == 0
    assert panel.page.locator(f"{SIDEBAR} .jp-HiveMind-retry").count() == 1


def test_retry_runs_it_again_as_a_new_task(panel: PanelPage) -> None:
    first = panel.page.locator(DETAIL).get_attribute("data-task-id")
    panel.page.click(f"{SIDEBAR} .jp-HiveMind-retry")
    again = panel.page.locator(f'{DETAIL}:not([data-task-id="{first}"])')
    again.wait_for()
    panel.wait_detail_state("RUNNING")
    panel.cancel_task()
    panel.wait_detail_state("CANCELLED", timeout=60_000)
    panel.back_to_list()
    # both attempts are in the list, the retry first
    rows = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow")
    assert rows.nth(1).get_attribute("data-task-id") == first


def test_task_list_filter_and_keyboard(panel: PanelPage) -> None:
    panel.back_to_list()
    rows = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow")
    rows.first.wait_for()
    assert rows.count() == 3
    panel.page.select_option(f'{SIDEBAR} select[aria-label="Filter tasks by state"]', "SUCCEEDED")
    panel.page.wait_for_function(
        "document.querySelectorAll('#hivemind-sidebar .jp-HiveMind-taskRow').length === 1"
    )
    assert rows.first.get_attribute("data-state") == "SUCCEEDED"
    panel.page.select_option(f'{SIDEBAR} select[aria-label="Filter tasks by state"]', "finished")
    panel.page.wait_for_function(
        "document.querySelectorAll('#hivemind-sidebar .jp-HiveMind-taskRow').length === 3"
    )
    panel.page.select_option(f'{SIDEBAR} select[aria-label="Filter tasks by state"]', "active")
    panel.page.locator(f"{SIDEBAR} .jp-HiveMind-message-empty", has_text="No active tasks").wait_for()
    panel.page.select_option(f'{SIDEBAR} select[aria-label="Filter tasks by state"]', "")
    panel.page.wait_for_function(
        "document.querySelectorAll('#hivemind-sidebar .jp-HiveMind-taskRow').length === 3"
    )
    # keyboard: focus the first row, arrow down, Enter opens it, Escape goes back
    panel.page.locator(f"{SIDEBAR} .jp-HiveMind-rowButton").first.focus()
    panel.page.keyboard.press("ArrowDown")
    second = rows.nth(1).get_attribute("data-task-id")
    panel.page.keyboard.press("Enter")
    panel.page.wait_for_selector(f'{SIDEBAR} .jp-HiveMind-detail[data-task-id="{second}"]')
    panel.page.keyboard.press("Escape")
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-tasks")


def test_pool_view_shows_the_worker(panel: PanelPage) -> None:
    panel.show_view("pool")
    card = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-workerCard", has_text="lab-box")
    card.wait_for()
    assert card.get_attribute("data-state") == "WORKER_ONLINE"
    text = card.inner_text()
    assert re.search(r"CPU\s+\S+ free of 2", text), text
    assert "Memory" in text and "free of 4 GiB" in text, text
    assert "running task" in text and "heartbeat" in text, text
    # the Python it runs tasks with (the local executor's: the worker's own) and its environment
    # cache, from the pool's REST view of the worker
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert card.locator(".jp-HiveMind-workerPython").inner_text() == f"Python {python}"
    cache = card.locator(".jp-HiveMind-workerEnvCache")
    cache.wait_for()  # from the worker's next heartbeat, where the pool view came before it
    assert re.fullmatch(r"\d+ environments? · [\d.]+ [KMGT]?i?B( · \d+% hits)?", cache.inner_text()), (
        cache.inner_text()
    )
    # every meter's bar has the same width, whatever the length of its numbers
    widths = {
        round(box["width"])
        for box in (m.bounding_box() for m in card.locator(".jp-HiveMind-meterBar").all())
        if box
    }
    assert len(widths) == 1, widths


def test_a_task_that_ends_out_of_view_is_announced(panel: PanelPage, lab: Lab) -> None:
    # sent from elsewhere (not from this panel) while the result notebook is in front
    status, task = lab.api("POST", "/hivemind/api/tasks", {"path": "hello.ipynb", "name": "told apart"})
    assert status == 201 and isinstance(task, dict), task
    toast = panel.page.locator(".Toastify__toast", has_text="HiveMind: told apart finished")
    toast.wait_for(timeout=120_000)
    toast.get_by_role("button", name="Open").click()
    panel.page.wait_for_selector(
        f'{SIDEBAR} .jp-HiveMind-detail[data-task-id="{task["id"]}"]', state="visible"
    )
    panel.wait_detail_state("SUCCEEDED")


def test_two_result_tabs_are_told_apart(panel: PanelPage) -> None:
    """A second result of hello.ipynb opens as a tab of its own name, beside the first one's."""
    task_id = panel.page.locator(DETAIL).get_attribute("data-task-id")  # "told apart", just ended
    panel.page.click(f"{SIDEBAR} .jp-HiveMind-openResult")
    panel.page.locator(CURRENT_TAB, has_text=f"told apart - {task_id}.ipynb").wait_for(timeout=60_000)
    tabs = panel.page.locator("#jp-main-dock-panel .lm-TabBar-tab").all_inner_texts()
    results = [title.strip() for title in tabs if " - t-" in title]
    assert len(results) == 2 and len(set(results)) == 2, tabs


def test_a_folder_with_a_secret_says_what_was_left_out(panel: PanelPage) -> None:
    panel.run_from_file_browser("with-secret", {})
    toast = panel.page.locator(".Toastify__toast", has_text="HiveMind sent with-secret, but left out")
    toast.wait_for(timeout=30_000)
    assert ".env" in toast.inner_text()
    toast.get_by_role("button", name="Details").click()
    details = panel.page.locator(".jp-Dialog")
    details.wait_for()
    assert "To send one on purpose, add !NAME to .hivemindignore" in details.inner_text()
    details.locator(".jp-Dialog-button").last.click()
    details.wait_for(state="detached")
    panel.wait_detail_state("SUCCEEDED")


def test_a_cell_task_is_named_after_its_notebook_and_shows_its_code(
    panel: PanelPage, lab: Lab, tmp_path: Path
) -> None:
    (lab.root / "cells.ipynb").write_text(
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "execution_count": None,
                        "id": "load",
                        "metadata": {},
                        "outputs": [],
                        "source": "%load_ext hivemind_jupyter",
                    },
                    {
                        "cell_type": "code",
                        "execution_count": None,
                        "id": "remote",
                        "metadata": {},
                        "outputs": [],
                        "source": "%%hivemind --memory 512M\nprint('from a cell')\n"
                        "import time\nfor step in range(8):\n"
                        "    print('step', step, flush=True)\n    time.sleep(0.5)",
                    },
                    *(
                        {
                            "cell_type": "code",
                            "execution_count": None,
                            "id": name,
                            "metadata": {},
                            "outputs": [],
                            "source": source,
                        }
                        for name, source in CHECK_CELLS.items()
                    ),
                ],
                "metadata": {
                    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    panel.open_file_browser()
    panel.file_item("cells.ipynb").dblclick()
    panel.page.locator(CURRENT_TAB, has_text="cells.ipynb").wait_for(timeout=60_000)
    notebook = panel.page.locator(".jp-NotebookPanel:visible").first
    notebook.locator(".jp-KernelName", has_text="Python 3").wait_for(timeout=60_000)
    notebook.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
    # every text the cell's status widget shows, as it shows it
    panel.page.evaluate(WIDGET_TEXTS)
    notebook.locator(".jp-Cell").first.locator(".jp-InputArea-prompt").click()
    panel.page.keyboard.press("Shift+Enter")
    panel.page.keyboard.press("Shift+Enter")
    # the cell while it streams, for the user guide
    notebook.locator(".jp-OutputArea-output", has_text="step 2").wait_for(timeout=120_000)
    # one cell: the status names the phase, counts no hidden cells, and its bar shows work
    # rather than a fraction (0 % or 50 %)
    remote = notebook.locator(".jp-Cell").nth(1)
    remote.locator(".widget-html-content", has_text="running · on lab-box").wait_for()
    assert remote.locator(".hivemind-working .progress-bar").count() == 1
    seen = panel.page.evaluate("window.__hmWidgetTexts")
    assert any("starting the kernel" in text for text in seen), seen
    assert not any(re.search(r"cell \d+/", text) for text in seen), seen
    shots = REPO / "docs" / "screenshots" if UPDATE_SCREENSHOTS else tmp_path
    notebook.locator(".jp-Cell").nth(1).screenshot(path=str(shots / "cell-streaming.png"))
    notebook.locator(".jp-OutputArea-output", has_text="step 7").wait_for(timeout=120_000)
    panel.open_panel()
    panel.show_view("tasks")
    panel.back_to_list()
    row = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow", has_text="cells.ipynb [2]")
    row.wait_for()
    # the list says when it was sent, the detail shows the start of the cell's code
    assert re.search(r"\d\d:\d\d", row.locator(".jp-HiveMind-submitted").inner_text())
    task_id = row.get_attribute("data-task-id")
    row.locator("button").click()
    preview = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-codePreview")
    preview.wait_for()
    assert preview.inner_text().startswith("print('from a cell')\nimport time\n")
    # a plain cell (no output files, no failure, no --save) writes no results folder
    cell = notebook.locator(".jp-Cell").nth(1)
    cell.locator(".jp-OutputArea-output", has_text="SUCCEEDED").wait_for(timeout=60_000)
    assert "files in" not in cell.inner_text()
    assert not list(lab.root.rglob(f"*{task_id}*")), "a plain cell wrote its result beside the notebook"


# Cells of cells.ipynb for the checks below, run one at a time in the open notebook (one kernel).
CHECK_CELLS = {
    "help": "%%hivemind --help",
    "nofit": "%%hivemind --memory 512M --gpus 4\nprint('never runs')",
    "interrupt": "%%hivemind --memory 512M\nimport time\nprint('started', flush=True)\ntime.sleep(300)",
}


def _run_check_cell(panel: PanelPage, name: str) -> Any:
    """Runs one of CHECK_CELLS in the open cells.ipynb; its cell."""
    notebook = panel.page.locator(".jp-NotebookPanel:visible").first
    cell = notebook.locator(".jp-Cell").nth(2 + list(CHECK_CELLS).index(name))
    cell.locator(".jp-InputArea-prompt").click()
    panel.page.keyboard.press("Control+Enter")
    return cell


def _wait_cell_done(cell: Any) -> None:
    prompt = cell.locator(".jp-InputArea-prompt")
    cell.page.wait_for_function(
        "el => /\\[\\d+\\]/.test(el.innerText)", arg=prompt.element_handle(), timeout=120_000
    )


def test_cell_help_is_shown_once(panel: PanelPage) -> None:
    cell = _run_check_cell(panel, "help")
    _wait_cell_done(cell)
    text = cell.locator(".jp-OutputArea").inner_text()
    assert text.count("usage: %%hivemind") == 1 and text.count("show this help") == 1, text
    assert "UsageError" not in text and "Traceback" not in text, text


def test_a_cell_no_worker_fits_ends_at_once_with_the_reason(panel: PanelPage) -> None:
    cell = _run_check_cell(panel, "nofit")
    reason = cell.locator(".jp-OutputArea-output", has_text="no connected worker could run this")
    reason.wait_for(timeout=60_000)
    _wait_cell_done(cell)
    text = cell.locator(".jp-OutputArea").inner_text()
    assert "--wait-for-fit" in text and "GPU" in text and "was cancelled" in text, text
    assert "never runs" not in text and "Traceback" not in text, text


def test_interrupting_a_running_cell_says_one_line(panel: PanelPage) -> None:
    cell = _run_check_cell(panel, "interrupt")
    cell.locator(".jp-OutputArea-output", has_text="started").wait_for(timeout=120_000)
    notebook = panel.page.locator(".jp-NotebookPanel:visible").first
    notebook.locator('.jp-Toolbar-item[data-jp-item-name="interrupt"]').click()
    cell.locator(".jp-OutputArea-output", has_text="Cancelled on the pool after").wait_for(timeout=60_000)
    _wait_cell_done(cell)
    text = cell.locator(".jp-OutputArea").inner_text()
    assert len([line for line in text.splitlines() if "ancel" in line]) == 1, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def _set_theme(lab: Lab, theme: str) -> None:
    status, body = lab.api(
        "PUT",
        "/lab/api/settings/@jupyterlab/apputils-extension:themes",
        {"raw": json.dumps({"theme": theme})},
    )
    assert status == 204, (status, body)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots(panel: PanelPage, lab: Lab, theme: str, tmp_path: Path) -> None:
    shots = REPO / "docs" / "screenshots" if UPDATE_SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    _set_theme(lab, "JupyterLab Dark" if theme == "dark" else "JupyterLab Light")
    panel.open_lab()
    panel.open_panel()
    panel.page.wait_for_selector(
        f'body[data-jp-theme-light="{"false" if theme == "dark" else "true"}"]', state="attached"
    )
    panel.show_view("tasks")
    panel.back_to_list()
    # the first result in front: what "Open executed notebook" showed, outputs and all
    panel.page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="hello - t-").click()
    panel.page.wait_for_selector(".jp-NotebookPanel:visible .jp-OutputArea-output:has-text('hi 3')")
    panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow").first.wait_for()
    panel.screenshot(str(shots / f"panel-tasks-{theme}.png"))
    panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow").last.locator("button").click()
    panel.wait_detail_state("SUCCEEDED")
    panel.page.wait_for_function(
        "document.querySelector('#hivemind-sidebar .jp-HiveMind-log').innerText.includes('done')"
    )
    panel.screenshot(str(shots / f"panel-detail-{theme}.png"))
    panel.show_view("pool")
    panel.page.locator(f"{SIDEBAR} .jp-HiveMind-workerCard").first.wait_for()
    panel.screenshot(str(shots / f"panel-pool-{theme}.png"))
    if theme == "dark":
        _set_theme(lab, "JupyterLab Light")
    for name in ("tasks", "detail", "pool"):
        assert (shots / f"panel-{name}-{theme}.png").stat().st_size > 10_000


def test_restored_after_reload(panel: PanelPage) -> None:
    panel.open_file_browser()
    saved = lambda request: "/lab/api/workspaces" in request.url and request.method == "PUT"  # noqa: E731
    with panel.page.expect_request(saved, timeout=30_000):
        panel.open_panel()  # JupyterLab saves the layout with the panel open
    panel.open_lab()
    # ILayoutRestorer: the panel that was open comes back open, on the view it showed
    panel.page.wait_for_selector(SIDEBAR, state="visible", timeout=60_000)
    assert panel.page.locator("#filebrowser").is_hidden()


def test_a_restored_result_stays_without_a_kernel(panel: PanelPage, lab: Lab) -> None:
    """A result tab that the layout restorer brings back after a reload opens as it first did."""
    result_tab = "#jp-main-dock-panel .lm-TabBar-tab"
    panel.page.locator(result_tab, has_text="hello - t-").wait_for()  # open since test_open_result
    panel.open_lab()
    panel.page.locator(result_tab, has_text="hello - t-").click()
    panel.page.wait_for_selector(".jp-NotebookPanel:visible .jp-OutputArea-output:has-text('hi 3')")
    # once its session has settled (where a kernel would have started by now), it has none
    path, kernel = panel.page.evaluate(
        """async () => {
            const widget = [...window.jupyterapp.shell.widgets('main')].find(w =>
                w.title.label.startsWith('hello - t-'));
            await widget.context.ready;
            await widget.sessionContext.ready;
            return [widget.context.path, widget.sessionContext.session?.kernel?.name ?? null];
        }"""
    )
    assert kernel is None, kernel
    kernel_name = panel.page.locator(".jp-NotebookPanel:visible .jp-KernelName").first
    assert kernel_name.inner_text().strip() == "No Kernel"
    status, sessions = lab.api("GET", "/api/sessions")
    assert status == 200 and isinstance(sessions, list), sessions
    assert [s for s in sessions if s["path"] == path] == [], sessions


def _task_count(panel: PanelPage) -> int:
    text = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-count").inner_text()
    return int(text.split()[0])


def _dialog_error(panel: PanelPage, fields: dict[str, str], expected: str) -> None:
    panel.fill_dialog(fields, accept=False)
    panel.page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click()
    # the dialog comes back with what is wrong (the previous dialog may still be closing)
    panel.page.locator(".jp-Dialog .jp-HiveMind-error", has_text=expected).wait_for()
    panel.page.wait_for_function("document.querySelectorAll('.jp-Dialog').length === 1")


def test_submit_dialog_refuses_bad_input(panel: PanelPage) -> None:
    panel.open_panel()
    panel.show_view("tasks")
    panel.back_to_list()
    before = _task_count(panel)
    panel.open_file_browser()
    item = panel.file_item("hello.ipynb")
    item.click(button="right")
    panel.page.locator(".lm-Menu-item", has_text="Run on HiveMind").click()
    dialog = panel.page.locator(".jp-Dialog")
    dialog.wait_for()
    # the notebook's own parameters, its requirements, and the cells' default timeout (the pool's)
    assert dialog.locator('[name="parameters"]').input_value() == 'greeting="hello"'
    assert dialog.locator('[name="requirements"]').count() == 1
    assert dialog.locator('[name="timeout"]').input_value() == ""
    _dialog_error(panel, {"cpus": "-1"}, "CPUs must be a number above 0")
    _dialog_error(panel, {"cpus": "1", "memory": "lots"}, "Memory must be a size")
    _dialog_error(panel, {"memory": "1G", "gpus": "1.5"}, "GPUs must be a whole number")
    _dialog_error(panel, {"gpus": "0", "timeout": "soon"}, "timeout must be a duration")
    _dialog_error(panel, {"timeout": "10m", "parameters": "no equals sign"}, "name=value")
    _dialog_error(panel, {"parameters": "1x=2"}, "not a Python variable name")
    _dialog_error(panel, {"parameters": "a=1\na=2"}, "given twice")
    _dialog_error(panel, {"parameters": "", "name": "n" * 500}, "too long")
    # what was typed is kept between tries; cancelling sends nothing
    assert panel.page.locator('.jp-Dialog [name="timeout"]').input_value() == "10m"
    panel.page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-reject").click()
    panel.open_panel()
    panel.page.wait_for_timeout(500)
    assert _task_count(panel) == before


def test_server_refusals_are_shown(panel: PanelPage) -> None:
    # a folder with two notebooks and no entry: the server says which one to choose
    panel.run_from_file_browser("two", {})
    toast = panel.page.locator(".Toastify__toast", has_text="HiveMind did not accept two")
    toast.wait_for(timeout=30_000)
    assert "2 notebooks" in toast.inner_text() or "entry" in toast.inner_text()
    # the toast is cut short; "Details" shows the server's whole message
    toast.get_by_role("button", name="Details").click()
    details = panel.page.locator(".jp-Dialog")
    details.wait_for()
    assert "a.ipynb" in details.inner_text()
    details.locator(".jp-Dialog-button").last.click()
    # a body far over the server's limit (2 MB of parameters) is refused, and says why
    panel.open_file_browser()
    panel.file_item("hello.ipynb").click(button="right")
    panel.page.locator(".lm-Menu-item", has_text="Run on HiveMind").click()
    dialog = panel.page.locator(".jp-Dialog")
    dialog.wait_for()
    dialog.locator('[name="parameters"]').evaluate(
        "(el, text) => { el.value = text; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        "blob=" + "x" * 2_000_000,
    )
    dialog.locator('[name="parameters"]').press("End")
    dialog.locator('[name="parameters"]').type(" ")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    big = panel.page.locator(".Toastify__toast", has_text="HiveMind did not accept hello.ipynb")
    big.wait_for(timeout=30_000)
    assert "1 MiB" in big.inner_text()


def test_hostile_task_name_is_shown_as_text(panel: PanelPage) -> None:
    hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    panel.run_from_file_browser("hello.ipynb", {"name": hostile})
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-detail[data-task-id]", state="visible")
    title = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-detailTitle")
    assert title.inner_text() == hostile
    assert panel.page.locator(f"{SIDEBAR} img").count() == 0
    assert panel.page.evaluate("window.__pwned") is None
    panel.wait_detail_state("SUCCEEDED")


def test_reconnects_after_the_socket_drops(panel: PanelPage, lab: Lab) -> None:
    panel.back_to_list()
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-connection-open")
    opened = panel.page.evaluate("window.__hmSockets.length")
    panel.page.evaluate("window.__hmSockets.forEach(s => s.close())")
    panel.page.wait_for_function(f"window.__hmSockets.length > {opened}", timeout=30_000)
    panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-connection-open", timeout=30_000)
    # updates flow again: a task sent from elsewhere appears and goes live without a reload
    status, task = lab.api("POST", "/hivemind/api/tasks", {"path": "slow.ipynb", "name": "from elsewhere"})
    assert status == 201, task
    assert isinstance(task, dict)
    row = panel.page.locator(f'{SIDEBAR} .jp-HiveMind-taskRow[data-task-id="{task["id"]}"]')
    row.wait_for(timeout=30_000)
    panel.page.wait_for_selector(
        f'{SIDEBAR} .jp-HiveMind-taskRow[data-task-id="{task["id"]}"][data-state="RUNNING"]', timeout=60_000
    )
    row.locator("button").click()
    panel.cancel_task()
    panel.wait_detail_state("CANCELLED", timeout=60_000)


def test_settings_change_page_size_and_defaults(panel: PanelPage, lab: Lab) -> None:
    settings = {
        "tasksPerPage": 2,
        "defaultResources": {"cpus": 2, "memory": "1G", "gpus": 0},
        "defaultTimeout": "45m",
    }
    status, body = lab.api("PUT", "/lab/api/settings/hivemind-jupyter:plugin", {"raw": json.dumps(settings)})
    assert status == 204, body
    try:
        panel.open_lab()
        panel.open_panel()
        panel.show_view("tasks")
        panel.back_to_list()
        more = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-more")
        more.wait_for()
        assert panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow").count() == 2
        assert more.inner_text().startswith("Show more (2 of ")
        more.click()
        panel.page.wait_for_function(
            "document.querySelectorAll('#hivemind-sidebar .jp-HiveMind-taskRow').length === 4"
        )
        panel.open_file_browser()
        panel.file_item("hello.ipynb").click(button="right")
        panel.page.locator(".lm-Menu-item", has_text="Run on HiveMind").click()
        dialog = panel.page.locator(".jp-Dialog")
        dialog.wait_for()
        assert dialog.locator('[name="cpus"]').input_value() == "2"
        assert dialog.locator('[name="memory"]').input_value() == "1G"
        assert dialog.locator('[name="timeout"]').input_value() == "45m"
        dialog.locator(".jp-Dialog-button.jp-mod-reject").click()
    finally:
        lab.api("PUT", "/lab/api/settings/hivemind-jupyter:plugin", {"raw": "{}"})


def test_sign_out(panel: PanelPage) -> None:
    panel.open_panel()
    panel.sign_out()
    assert panel.page.locator(f"{SIDEBAR} .jp-HiveMind-taskRow").count() == 0

"""A worker's script does not run in the user's browser: a real JupyterLab, pool and worker, and
Chromium running a notebook whose `%%hivemind` cells display HTML with a <script>, an <img
onerror> and a JavaScript output. From a pool the user has not marked trusted, none of them sets
its marker; the same cell from a pool listed in c.HiveMind.trusted_pools sets all three, which
shows that the page would have run them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from harness.pool import PoolProcess

from .conftest import PASSWORD, USER, Lab, notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def hostile_cell(prefix: str, visible: str) -> str:
    html = (
        f"<b>{visible}</b>"
        f'<img src="hm-missing.png" onerror="window.{prefix}_img = 1">'
        f"<script>window.{prefix}_script = 1</script>"
    )
    return (
        "%%hivemind --memory 512M\n"
        "from IPython.display import HTML, Javascript, display\n"
        f"display(HTML({html!r}))\n"
        f"display(Javascript('window.{prefix}_js = 1'))\n"
    )


@pytest.fixture(scope="module")
def page(browser: Any, lab: Lab, ui_worker: Any, ui_pool: PoolProcess) -> Iterator[Any]:
    status, body = lab.api("POST", "/hivemind/api/session", {"username": USER, "password": PASSWORD})
    assert status == 200, body
    (lab.root / "trust.ipynb").write_text(
        notebook(
            "%load_ext hivemind_jupyter",
            hostile_cell("__pwned", "untrusted-visible"),
            f"%config HiveMind.trusted_pools = [{ui_pool.address!r}]",
            hostile_cell("__trusted", "trusted-visible"),
        )
    )
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def run_cell(page: Any, cell: Any) -> None:
    """Click into the cell and press Shift+Enter until its prompt shows it queued or run ([*] or
    [N]): a page still settling may swallow the first key press."""
    for _ in range(5):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        for _ in range(20):
            if re.search(r"\[[0-9*]+\]", cell.locator(".jp-InputPrompt").inner_text()):
                return
            page.wait_for_timeout(250)
    raise AssertionError(f"the cell did not start: {cell.inner_text()[:300]}")


def test_a_script_in_a_tasks_html_output_does_not_run(page: Any, lab: Lab) -> None:
    page.goto(f"{lab.url}/lab/tree/trust.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    # run the four cells in order as a person does: click into each, Shift+Enter
    cells = page.locator(".jp-NotebookPanel .jp-CodeCell")
    for index in range(4):
        run_cell(page, cells.nth(index))
    outputs = ".jp-NotebookPanel .jp-OutputArea-output"
    try:
        page.wait_for_selector(f"{outputs}:has-text('untrusted-visible')", timeout=240_000)
        page.wait_for_selector(f"{outputs}:has-text('trusted-visible')", timeout=240_000)
    except Exception:
        shown = page.locator(".jp-NotebookPanel .jp-OutputArea").all_inner_texts()
        raise AssertionError(f"the cells did not show their outputs: {shown}\n{lab.log()[-3000:]}") from None
    # The trusted pool's copy runs all three in this page: the check below can see a script run.
    page.wait_for_function(
        "window.__trusted_img === 1 && window.__trusted_script === 1 && window.__trusted_js === 1",
        timeout=60_000,
    )
    markers = page.evaluate("[window.__pwned_img, window.__pwned_script, window.__pwned_js, document.title]")
    assert markers[:3] == [None, None, None], f"a worker's script ran in the browser: {markers}"
    untrusted = page.locator(outputs, has_text="untrusted-visible").first.inner_html()
    assert "onerror" not in untrusted and "<script" not in untrusted
    # the saved notebook keeps only the safe copy of the untrusted pool's output
    page.keyboard.press("Control+s")
    page.wait_for_timeout(1000)
    saved = json.loads((lab.root / "trust.ipynb").read_text())
    texts = json.dumps(saved["cells"][1]["outputs"])
    assert "untrusted-visible" in texts and "__pwned" not in texts

"""JupyterLab's own start-up check (`python -m jupyterlab.browser_check`) with a local Chromium.

JupyterLab's check starts the server, opens JupyterLab in a headless browser and fails on any
error the page or the server logs while every extension (ours included) activates. Its browser
step downloads a browser through Node's Playwright, which cannot work offline; this script keeps
JupyterLab's check and only swaps that step for Python Playwright driving an installed Chromium
($HIVEMIND_CHROMIUM, else `chromium` on PATH).

    python scripts/browser_check.py [--allow-root] [jupyter server options]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from jupyterlab import browser_check  # type: ignore[import-untyped]

# Chromium here must not try to reach hosts it cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    path = os.environ.get("HIVEMIND_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        raise RuntimeError(f"no Chromium at {path}: install Debian's chromium or set HIVEMIND_CHROMIUM")
    return path


async def run_browser(url: str) -> None:
    """Open JupyterLab, wait until it has started, and raise on any error the page reported."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="hivemind-browser-check-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                page_errors: list[str] = []
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                print("Navigating to", url, flush=True)
                await page.goto(url)
                await page.wait_for_selector("#main", timeout=100_000)
                await page.wait_for_selector("#browserTest", timeout=100_000, state="attached")
                await page.wait_for_selector(".completed", state="attached", timeout=100_000)
                errors = json.loads(await page.locator("#browserTest").text_content() or "[]")
                # HiveMind's own panel must have been added to the sidebar by its plugin.
                if not await page.query_selector("#hivemind-sidebar"):
                    page_errors.append("the HiveMind sidebar panel (#hivemind-sidebar) is missing")
            finally:
                await context.close()
    for error in errors:
        print("Parsed an error from the page:", error.get("message", error), file=sys.stderr)
    for error in page_errors:
        print("Uncaught error in the page:", error, file=sys.stderr)
    if errors or page_errors:
        raise RuntimeError(f"{len(errors) + len(page_errors)} errors while JupyterLab started")
    print("Browser check complete: JupyterLab started without errors", flush=True)


class CheckApp(browser_check.BrowserApp):
    """JupyterLab's BrowserApp, started from this module so the server finds it as an extension."""

    name = __name__


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    return [{"module": __name__, "app": CheckApp}]


def main() -> None:
    browser_check.run_browser = run_browser
    CheckApp.launch_instance()


if __name__ == "__main__":
    main()

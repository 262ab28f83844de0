"""How the browser tests drive JupyterLab and the HiveMind panel: selectors live here, not in tests."""

from __future__ import annotations

from typing import Any

SIDEBAR = "#hivemind-sidebar"
DETAIL = f"{SIDEBAR} .jp-HiveMind-detail[data-task-id]"

# Records each state the open task's detail shows, and every task-row state change, in the page
# itself: the test reads what the person saw, in order, without reloading.
RECORDER = """
() => {
  window.__hmStates = [];
  if (window.__hmRecorder) { return; }
  window.__hmRecorder = true;
  window.__hmStates = [];
  window.__hmRowChanges = [];
  const root = document.querySelector('#hivemind-sidebar');
  const record = (mutations) => {
    const detail = root.querySelector('.jp-HiveMind-detail[data-state]');
    if (detail) {
      const state = detail.getAttribute('data-state');
      const states = window.__hmStates;
      if (states[states.length - 1] !== state) { states.push(state); }
    }
    for (const m of mutations || []) {
      if (m.type === 'attributes' && m.target.classList.contains('jp-HiveMind-taskRow')) {
        window.__hmRowChanges.push({
          id: m.target.getAttribute('data-task-id'),
          state: m.target.getAttribute('data-state'),
          at: performance.now()
        });
      }
    }
  };
  new MutationObserver(record).observe(root, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']
  });
  record([]);
}
"""

# Notes when each task message arrives on the panel's WebSocket (for the live-update benchmark).
SOCKET_SPY = """
(() => {
  window.__hmTaskMessages = [];
  window.__hmSockets = [];
  const Native = window.WebSocket;
  class Spy extends Native {
    constructor(...args) {
      super(...args);
      if (String(args[0]).includes('/hivemind/api/stream')) {
        window.__hmSockets.push(this);
        this.addEventListener('message', event => {
          try {
            const message = JSON.parse(event.data);
            if (message.type === 'task') {
              window.__hmTaskMessages.push({
                id: message.task.id, state: message.task.state, at: performance.now()
              });
            }
          } catch (e) { /* not JSON */ }
        });
      }
    }
  }
  window.WebSocket = Spy;
})();
"""


# Records every text a notebook's ipywidgets HTML shows (the %%hivemind status line), in order.
WIDGET_TEXTS = """
() => {
  window.__hmWidgetTexts = [];
  const record = () => {
    for (const el of document.querySelectorAll('.jp-NotebookPanel .widget-html-content')) {
      const text = el.innerText;
      const texts = window.__hmWidgetTexts;
      if (text && !texts.includes(text.replace(/ · [0-9.]+s$/, ''))) {
        texts.push(text.replace(/ · [0-9.]+s$/, ''));
      }
    }
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


class PanelPage:
    def __init__(self, page: Any, lab_url: str, token: str) -> None:
        self.page = page
        self.lab_url = lab_url
        self.token = token

    def open_lab(self, path: str = "/lab") -> None:
        self.page.goto(f"{self.lab_url}{path}?token={self.token}")
        self.page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
        self.page.wait_for_selector(SIDEBAR, state="attached", timeout=60_000)

    def open_panel(self) -> None:
        self._show_sidebar(SIDEBAR, "hivemind-sidebar")

    def _show_sidebar(self, selector: str, tab_id: str) -> None:
        """Clicks a left-sidebar tab until its widget shows: the tab toggles, and a layout restore
        that is still running may open or close it under the click."""
        for _ in range(5):
            if self.page.locator(selector).is_visible():
                return
            self.page.click(f'.jp-SideBar .lm-TabBar-tab[data-id="{tab_id}"]')
            try:
                self.page.wait_for_selector(selector, state="visible", timeout=3_000)
                return
            except Exception:  # the restore closed it again: click once more
                continue
        self.page.wait_for_selector(selector, state="visible")

    def record(self) -> None:
        self.page.evaluate(RECORDER)

    def sign_in(self, user: str, password: str) -> None:
        form = self.page.locator(f"{SIDEBAR} form.jp-HiveMind-signin")
        form.wait_for()
        form.locator('input[name="username"]').fill(user)
        form.locator('input[name="password"]').fill(password)
        form.locator('input[name="password"]').press("Enter")

    def confirm(self, title: str) -> None:
        """Accepts JupyterLab's confirmation dialog, after checking it asks what is expected."""
        dialog = self.page.locator(".jp-Dialog", has_text=title)
        dialog.wait_for()
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        dialog.wait_for(state="detached")

    def cancel_task(self) -> None:
        self.page.click(f"{SIDEBAR} .jp-HiveMind-cancel")
        self.confirm("Cancel this task?")

    def sign_out(self) -> None:
        self.page.click(f"{SIDEBAR} .jp-HiveMind-signout")
        self.confirm("Sign out of HiveMind?")
        self.page.wait_for_selector(f"{SIDEBAR} form.jp-HiveMind-signin")

    def show_view(self, view: str) -> None:
        self.page.click(f'{SIDEBAR} [role="tab"][data-view="{view}"]')

    def back_to_list(self) -> None:
        if self.page.locator(f"{SIDEBAR} .jp-HiveMind-back").count():
            self.page.click(f"{SIDEBAR} .jp-HiveMind-back")
        self.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-tasks")

    def file_item(self, name: str) -> Any:
        return self.page.locator(
            ".jp-DirListing-item", has=self.page.locator(".jp-DirListing-itemText", has_text=name)
        ).first

    def open_file_browser(self) -> None:
        self._show_sidebar("#filebrowser", "filebrowser")

    def run_from_file_browser(self, name: str, fields: dict[str, str]) -> None:
        self.open_file_browser()
        item = self.file_item(name)
        item.wait_for()
        item.click(button="right")
        self.page.locator(".lm-Menu-item", has_text="Run on HiveMind").click()
        self.fill_dialog(fields)

    def fill_dialog(self, fields: dict[str, str], accept: bool = True) -> None:
        dialog = self.page.locator(".jp-Dialog")
        dialog.wait_for()
        # the dialog's form renders after it opens: fill until each field holds its value
        for _ in range(5):
            for name, value in fields.items():
                dialog.locator(f'[name="{name}"]').fill(value)
            self.page.wait_for_timeout(100)
            if all(dialog.locator(f'[name="{n}"]').input_value() == v for n, v in fields.items()):
                break
        if accept:
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()

    def detail_state(self) -> str | None:
        return self.page.locator(DETAIL).get_attribute("data-state")

    def wait_detail_state(self, state: str, timeout: float = 120_000) -> None:
        self.page.wait_for_selector(f'{DETAIL}[data-state="{state}"]', timeout=timeout)

    def states_seen(self) -> list[str]:
        return list(self.page.evaluate("window.__hmStates || []"))

    def log_text(self) -> str:
        return str(self.page.locator(f"{SIDEBAR} .jp-HiveMind-log").inner_text())

    def screenshot(self, path: str) -> None:
        self.page.screenshot(path=path)

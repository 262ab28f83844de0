"""Secrets in index URLs (`https://user:token@host/simple`) kept out of logs, events and notices."""

from __future__ import annotations

import re
from collections.abc import Iterable

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact_url(url: str) -> str:
    """The URL with any user and password replaced by `***`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", url)


class Redactor:
    """Removes the given URLs' credentials from any text (an installer's output, an error)."""

    def __init__(self, urls: Iterable[str]) -> None:
        self._secrets: list[str] = []
        for url in urls:
            match = _USERINFO.search(url)
            if match:
                userinfo = match["userinfo"]
                self._secrets += [userinfo, *[part for part in userinfo.split(":") if len(part) >= 4]]
        self._secrets.sort(key=len, reverse=True)  # the longest first: no half-redacted secret

    def __call__(self, text: str) -> str:
        text = redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

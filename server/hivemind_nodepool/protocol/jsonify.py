"""Protobuf messages as JSON-ready dicts: what the CLIs print with --json, what the REST API and
the WebSocket send, and hivemind.json."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def to_dict(message: Message, every_field: bool = False) -> dict[str, Any]:
    """Field names as in the proto, enums as names. With every_field, fields at their default
    value are there too (the REST API: the panel reads them without checking); without, they are
    left out (shorter output for people)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=every_field
    )

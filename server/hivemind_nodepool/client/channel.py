"""The client's gRPC channel: TLS when a CA is given, plaintext only where the wire rules allow it."""

from __future__ import annotations

from pathlib import Path

import grpc

from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.wire import (
    MAX_MESSAGE_BYTES,
    check_plaintext_allowed,
    join_address,
    split_address,
)

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a pool restart: workers and watchers resume within seconds.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def create_channel(address: str, ca_file: str | Path | None = None, insecure: bool = False) -> grpc.Channel:
    """A channel to the pool: TLS when a CA is given, plaintext only on loopback or with insecure."""
    host, port = split_address(address)
    target = join_address(host, port)
    if ca_file:
        try:
            root = Path(ca_file).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read the CA certificate {ca_file}: {exc.strerror}") from None
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    check_plaintext_allowed(host, insecure)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)

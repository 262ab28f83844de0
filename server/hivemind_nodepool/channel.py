"""Addresses and gRPC channels: one place decides TLS, loopback and message limits."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import grpc

from .errors import InvalidInput

DEFAULT_PORT = 50051
CHUNK_SIZE = 1024 * 1024  # bytes per streamed chunk
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # chunks are 1 MiB; nothing legitimate is bigger

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


def split_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """('pool.lab', 50051) from 'pool.lab:50051', 'pool.lab', '[::1]:50051'."""
    text = address.strip()
    if not text:
        raise InvalidInput("the pool address is empty; give HOST:PORT, e.g. localhost:50051")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    if not host:
        raise InvalidInput(f"no host in address {address!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise InvalidInput(f"not a port number in address {address!r}") from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"port out of range in address {address!r}")
    return host, port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when every address the host resolves to is on this machine's loopback."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_plaintext_allowed(host: str, insecure: bool) -> None:
    """Refuse plaintext off loopback unless the operator said --insecure."""
    if not insecure and not is_loopback(host):
        raise InvalidInput(
            f"refusing plaintext gRPC to {host}: it is not a loopback address. Use TLS "
            "(--ca FILE; an admin creates one with `hivemind-nodepool tls init`) or pass --insecure."
        )


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

"""Wire-level facts both ends agree on: the default port, chunk and message sizes, addresses, and
when plaintext is allowed (loopback only, unless the operator says otherwise)."""

from __future__ import annotations

import ipaddress
import re
import socket

from hivemind_nodepool.protocol.errors import InvalidInput

DEFAULT_PORT = 50051
CHUNK_SIZE = 1024 * 1024  # bytes per streamed chunk
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # chunks are 1 MiB; nothing legitimate is bigger
# A DNS name (RFC 1123 letters, digits, hyphens, dots; underscores seen in lab networks) or an IP.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,253}")


def split_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """('pool.lab', 50051) from 'pool.lab:50051', 'pool.lab', '[::1]:50051'."""
    text = address.strip()
    if not text:
        raise InvalidInput("the pool address is empty; give HOST:PORT, e.g. localhost:50051")
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise InvalidInput(f"a bracketed IPv6 address needs its ']' in {address[:300]!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    if not host:
        raise InvalidInput(f"no host in address {address[:300]!r}")
    if not _HOST_NAME.fullmatch(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidInput(f"not a host name or IP address in {address[:300]!r}") from None
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise InvalidInput(f"not a port number in address {address[:300]!r}")
    port = int(port_text) if port_text else default_port
    if not 0 <= port <= 65535:
        raise InvalidInput(f"port out of range in address {address[:300]!r}")
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
    except (OSError, UnicodeError):  # unknown, or a name no resolver can encode
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_plaintext_allowed(host: str, insecure: bool) -> None:
    """Refuse plaintext off loopback unless the operator said --insecure."""
    if not insecure and not is_loopback(host):
        raise InvalidInput(
            f"refusing plaintext gRPC to {host}: it is not a loopback address. Use TLS "
            "(--ca FILE; an admin creates one with `hivemind-nodepool tls init`) or pass --insecure."
        )

"""What the three command lines (`hivemind`, `hivemind-nodepool`, `hivemind-worker`) share.

The same options on each: `--version`, `-v/--verbose` (the same as `--log-level DEBUG`) and
`--log-level LEVEL`. Subcommands name their handler with `set_defaults(func=...)`. The same exit
codes: 0 done, 1 an error (any HiveMindError, reported in one line), 2 a usage error (argparse's:
an unknown flag, a missing or bad argument), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Sequence

from hivemind_nodepool import __version__
from hivemind_nodepool.protocol.errors import HiveMindError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with
EXIT_INTERRUPTED = 130

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Handler = Callable[[argparse.Namespace], int]


def add_common_options(parser: argparse.ArgumentParser, default_level: str) -> None:
    """`--version`, `-v/--verbose` and `--log-level` on a program's top-level parser."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {__version__}")
    logging_options = parser.add_mutually_exclusive_group()
    logging_options.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const="DEBUG",
        dest="log_level",
        help="log debug messages too (the same as --log-level DEBUG)",
    )
    logging_options.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        metavar="LEVEL",
        help=f"log messages of this level and above: {', '.join(LEVELS)} (default {default_level})",
    )
    parser.set_defaults(log_level=default_level)


def main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    log_format: str = LOG_FORMAT,
    quiet_loggers: Iterable[str] = (),
) -> int:
    """Parse, set up logging, run the chosen subcommand's `func`, and turn errors into exit codes."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=log_format, stream=sys.stderr)
    for name in quiet_loggers:  # libraries that are chatty at DEBUG even when we are not
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    handler: Handler = args.func
    try:
        return int(handler(args))
    except HiveMindError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

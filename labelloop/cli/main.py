"""`labelloop ...`: every job of the app, scriptable without the UI; one module per command group.

Errors a user can cause print one line starting with ``error:`` and exit
with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from labelloop.cli import data, embed, scores, train
from labelloop.errors import ConflictError, UserError

COMMAND_GROUPS = (data, embed, train, scores)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` only of its group's: `labelloop list` need not
    import torch to build the train group's flags (a second and a half of every small command)."""
    parser = argparse.ArgumentParser(prog="labelloop", description="LabelLoop: versioned image labels, a 3D map to fix them on, training, and whether a fix helped. `labelloop app` starts the web app.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="folder (or s3:// prefix) holding the data sets (default: $LABELLOOP_WORKSPACE, else tables/ in a source checkout, else ~/labelloop)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in [g for g in COMMAND_GROUPS if command in g.COMMANDS] or COMMAND_GROUPS:
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.func(args, unknown) if unknown else args.func(args)
    except ConflictError as exc:
        print(f"error: conflict: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written is kept", file=sys.stderr)
        return 130
    return 0

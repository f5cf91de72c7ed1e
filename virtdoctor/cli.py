"""Command line: global options, one module per subcommand, the exit-status contract.

Each subcommand lives in `virtdoctor/commands/<name>.py` with two functions:
`add_parser(subparsers)` (registers its options, `set_defaults(run=run)`) and
`run(args, ctx) -> int`. This module only parses, builds the `Context` and turns
tool errors and unexpected exceptions into a one-line message and status 3.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from virtdoctor import __version__
from virtdoctor.context import Context
from virtdoctor.model import ToolError
from virtdoctor.render.formats import ALL as FORMATS
from virtdoctor.render.formats import supported

COMMANDS = ("check", "checks", "preflight", "diagnose", "fix", "explain")
EXIT_TOOL = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are status 3, one line
        raise ToolError(f"usage: {message}")


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    sup = None if defaults else argparse.SUPPRESS

    def add(*names, **kw):
        if not defaults:
            kw["default"] = argparse.SUPPRESS
        parser.add_argument(*names, **kw)

    add("-c", "--connect", metavar="URI", dest="uri", default=sup,
        help="libvirt URI (default: LIBVIRT_DEFAULT_URI, then qemu:///system as root, qemu:///session otherwise)")
    add("--format", choices=FORMATS, default="text" if defaults else sup,
        help="output format (prometheus: check only; sarif: preflight only)")
    add("--root", metavar="DIR", default="/" if defaults else sup,
        help="read host files below DIR instead of / (a mounted image, a copied /etc)")
    add("--offline", action="store_true", default=False if defaults else sup,
        help="never connect to libvirt; checks that need it report skip")
    add("--output", metavar="FILE", default=sup,
        help="also write the JSON document to FILE (whatever the exit status)")
    add("--timeout", type=float, metavar="SECONDS", default=5.0 if defaults else sup,
        help="deadline for each libvirt call (default 5 s)")
    add("--no-plugins", action="store_true", default=False if defaults else sup,
        help="do not load third-party plugins (also VIRTDOCTOR_DISABLE_PLUGINS=1)")
    add("-v", "--verbose", action="count", default=0 if defaults else sup, help="show passing checks and details")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="virtdoctor", description="A doctor for libvirt/KVM hosts.")
    parser.add_argument("--version", action="version", version=f"virtdoctor {__version__}")
    _global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"virtdoctor.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"virtdoctor.commands.{name}":
                continue
            raise
        before = set(sub.choices)
        module.add_parser(sub)
        for new in set(sub.choices) - before:  # global options after the subcommand too
            _global_options(sub.choices[new], defaults=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    if "NO_COLOR" in os.environ:
        os.environ.setdefault("TERM", "dumb")
    import time

    started = time.time()
    try:
        rc = _main(argv)
    except _Failed as failed:
        from virtdoctor.render.formats import on_tool_error

        on_tool_error(failed.args_ns, failed.message, sys.stdout, started, time.time() - started)
        return EXIT_TOOL
    return rc


class _Failed(Exception):
    def __init__(self, args_ns, message):
        super().__init__(message)
        self.args_ns, self.message = args_ns, message


def _main(argv: list[str] | None) -> int:
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_TOOL
        supported(getattr(args, "format", "text"), args.command)
        ctx = Context.from_args(args)
        try:
            return args.run(args, ctx)
        except Exception as exc:
            _write_output(ctx, args, exc)
            raise
        finally:
            _write_output(ctx, args, None)
    except ToolError as exc:
        print(f"virtdoctor: {_one_line(exc)}", file=sys.stderr)
        raise _Failed(args, _one_line(exc)) from None
    except KeyboardInterrupt:
        print("virtdoctor: interrupted", file=sys.stderr)
        return EXIT_TOOL
    except BrokenPipeError:
        return EXIT_TOOL
    except Exception as exc:  # the contract: one line, status 3, no traceback
        if os.environ.get("VIRTDOCTOR_TRACEBACK"):
            raise
        print(f"virtdoctor: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        raise _Failed(args, f"internal error: {type(exc).__name__}: {_one_line(exc)}") from None


def _write_output(ctx, args, exc: BaseException | None) -> None:
    """--output FILE: the run's JSON document (built by the command whatever the format), or,
    when the command failed, a document that says why (`error`). Written once."""
    run = ctx.run
    if not run.output or getattr(run, "written", False):
        return
    from virtdoctor.render.report import error_document, make_target, write_output

    doc = run.document
    if doc is None or exc is not None:
        message = _one_line(exc) if exc is not None else "no document was produced"
        if exc is not None and not isinstance(exc, ToolError):
            message = f"internal error: {type(exc).__name__}: {message}"
        doc = error_document(run, args.command, make_target(run, root=ctx.root), message)
    run.written = True
    try:
        write_output(run.output, doc)
    except OSError as err:
        raise ToolError(f"--output {run.output}: {err.strerror or err}") from None


def _one_line(exc: BaseException) -> str:
    """The contract is one line on stderr: the first non-blank line of the message."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")

"""What a subcommand gets: the parsed options plus lazily built plugin manager,
host facts, knowledge base and output console. Building any of these does I/O,
so nothing is built before a command asks for it."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TextIO

from virtdoctor.model import ToolError


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    run: Any = None  # virtdoctor.render.report.Run: clock, --output, the document built

    def __post_init__(self) -> None:
        if self.run is None:
            from virtdoctor.render.report import Run

            self.run = Run(output=getattr(self.args, "output", None))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Context":
        root = getattr(args, "root", "/") or "/"
        if not os.path.isdir(root):
            raise ToolError(f"--root {root}: not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ToolError(f"--root {root}: not readable")
        return cls(args)

    # options every command has
    @property
    def fmt(self) -> str:
        return getattr(self.args, "format", "text")

    @property
    def root(self) -> str:
        return getattr(self.args, "root", "/") or "/"

    @property
    def offline(self) -> bool:
        return bool(getattr(self.args, "offline", False))

    @property
    def verbose(self) -> int:
        return int(getattr(self.args, "verbose", 0) or 0)

    @cached_property
    def plugins(self):
        from virtdoctor.plugins import build_manager

        autoload = not getattr(self.args, "no_plugins", False) and not os.environ.get("VIRTDOCTOR_DISABLE_PLUGINS")
        return build_manager(autoload=autoload, warn=self.err)

    @cached_property
    def registry(self):
        """All checks of all plugins, by slug (see plugins.collect_checks)."""
        from virtdoctor.plugins import collect_checks

        return collect_checks(self.plugins, warn=self.err)

    def facts(self, *, writable: bool = False):
        """A fresh HostFacts for this run's --root, URI and --offline."""
        from virtdoctor.facts import HostFacts

        return HostFacts(
            root=self.root,
            uri=getattr(self.args, "uri", None),
            offline=self.offline,
            timeout=float(getattr(self.args, "timeout", 5.0) or 5.0),
        )

    @cached_property
    def knowledge(self):
        from virtdoctor.knowledge import load
        from virtdoctor.plugins import knowledge_dirs

        return load(knowledge_dirs(self.plugins))

    @cached_property
    def console(self):
        from virtdoctor.render.text import make_console

        return make_console(self.out)

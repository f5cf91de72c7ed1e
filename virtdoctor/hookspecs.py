"""The plugin contract: two hooks, both returning data.

Built-in checks register through exactly these hooks; third-party plugins are
found through the entry-point group ``virtdoctor`` and implement the same ones.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pluggy

from virtdoctor.checkdef import Check

PROJECT = "virtdoctor"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def virtdoctor_checks() -> Iterable[Check]:
    """Return this plugin's checks (objects made by ``@check``).

    Called once per run, before --only/--skip selection. Implemented by every
    module of ``checks/`` and by third-party plugins. The order of the returned
    list is the order of the report within an area."""


@hookspec
def virtdoctor_knowledge_dirs() -> Iterable[Path]:
    """Return directories holding knowledge files (``<slug>.toml``).

    Called once when explain, diagnose or a report needs the knowledge base.
    Implemented by the built-in knowledge package and by plugins that add
    catalogue entries for their own checks."""

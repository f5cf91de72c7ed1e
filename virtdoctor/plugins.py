"""Builds the plugin manager: hook specs, the built-in check modules, then the
third-party plugins of the ``virtdoctor`` entry-point group.

Built-in checks go through the same hooks as third-party ones. A plugin that
fails to load is a warning on stderr, never a crash: a doctor must run exactly
when something on the host is broken.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path
from typing import TextIO

import pluggy

from virtdoctor import hookspecs
from virtdoctor.checkdef import Check
from virtdoctor.model import ToolError

ENTRY_POINT_GROUP = "virtdoctor"


class _BuiltinKnowledge:
    """Contributes the knowledge files shipped with virtdoctor."""

    @hookspecs.hookimpl
    def virtdoctor_knowledge_dirs(self):
        from virtdoctor.knowledge import builtin_dir

        return [builtin_dir()]


def build_manager(*, autoload: bool = True, warn: TextIO | None = None) -> pluggy.PluginManager:
    from virtdoctor.checks import BUILTIN_PLUGINS

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(_BuiltinKnowledge(), name="virtdoctor.knowledge")
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if autoload:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not stop the doctor
                if warn is not None:
                    print(f"virtdoctor: warning: plugin {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}", file=warn)
    pm.check_pending()
    return pm


def collect_checks(pm: pluggy.PluginManager) -> dict[str, Check]:
    """All checks in registration order, keyed by slug (``slug@domain`` for the
    domain-scope twin of a slug that is also checked on the host)."""
    registry: dict[str, Check] = {}
    for impl in pm.hook.virtdoctor_checks.get_hookimpls():  # registration order
        try:
            result = impl.function()
        except Exception as exc:
            raise ToolError(f"plugin {impl.plugin_name} failed to list its checks: {exc}") from exc
        for chk in result or ():
            if not isinstance(chk, Check):
                raise ToolError(f"plugin {impl.plugin_name} returned {chk!r}, not a @check")
            registry[key(chk)] = chk
    return registry


def key(chk: Check) -> str:
    return chk.slug if chk.scope != "domain" else f"{chk.slug}@domain"


def knowledge_dirs(pm: pluggy.PluginManager) -> list[Path]:
    dirs: list[Path] = []
    for result in reversed(pm.hook.virtdoctor_knowledge_dirs()):
        dirs.extend(result or ())
    return dirs

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
    pm.check_pending()  # a misspelt hook in a built-in module fails loudly
    if autoload:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
                pm.check_pending()  # a misspelt hook: this plugin is broken, not the doctor
            except Exception as exc:  # a broken plugin must not stop the doctor
                if pm.has_plugin(ep.name):
                    pm.unregister(name=ep.name)
                _warn(warn, f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    return pm


def _warn(warn: TextIO | None, message: str) -> None:
    if warn is not None:
        print(f"virtdoctor: warning: {message}", file=warn)


def collect_checks(pm: pluggy.PluginManager, warn: TextIO | None = None) -> dict[str, Check]:
    """All checks in registration order, keyed by slug (``slug@domain`` for the
    domain-scope twin of a slug that is also checked on the host).

    A third-party plugin whose hook raises or returns something that is not a
    check is a warning (its checks are left out); a built-in one is a bug of
    virtdoctor itself: ToolError."""
    from virtdoctor.checks import BUILTIN_PLUGINS

    registry: dict[str, Check] = {}
    for impl in pm.hook.virtdoctor_checks.get_hookimpls():  # registration order
        builtin = impl.plugin_name in BUILTIN_PLUGINS
        try:
            result = list(impl.function() or ())
            bad = next((c for c in result if not isinstance(c, Check)), None)
            if bad is not None:
                raise ToolError(f"plugin {impl.plugin_name} returned {bad!r}, not a @check")
        except Exception as exc:
            problem = exc if isinstance(exc, ToolError) else ToolError(
                f"plugin {impl.plugin_name} failed to list its checks: {type(exc).__name__}: {exc}")
            if builtin:
                raise problem from exc
            _warn(warn, str(problem))
            continue
        for chk in result:
            registry[key(chk)] = chk
    return registry


def key(chk: Check) -> str:
    return chk.slug if chk.scope != "domain" else f"{chk.slug}@domain"


def knowledge_dirs(pm: pluggy.PluginManager) -> list[Path]:
    dirs: list[Path] = []
    for result in reversed(pm.hook.virtdoctor_knowledge_dirs()):
        dirs.extend(result or ())
    return dirs

"""What several subcommands share: check selection options, the domains to
look at, and running the selected checks into findings."""
from __future__ import annotations

import argparse

from virtdoctor import domxml, engine
from virtdoctor.model import FactUnavailable, Finding, ToolError


def add_selection(parser: argparse.ArgumentParser, *, domain: bool = True) -> None:
    parser.add_argument("--only", nargs="+", default=[], metavar="SLUG",
                        help="run only these checks (before file arguments write --only=A,B)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="SLUG",
                        help="do not run these checks (before file arguments write --skip=A,B)")
    if domain:
        parser.add_argument("--domain", "-d", action="append", default=[], metavar="NAME",
                            help="look at this defined domain only (repeatable); host checks still run")


def selected_checks(ctx, args) -> list:
    slugs = {c.slug for c in ctx.registry.values()}
    known: tuple | set = ()
    if any(s not in slugs for s in engine.split_slugs(args.skip)):
        # only then is the knowledge base worth loading: --skip may name a
        # catalogue slug that no check implements
        try:
            known = set(ctx.knowledge.entries)
        except Exception:
            known = ()
    return engine.select(ctx.registry, args.only, args.skip, known)


def knowledge_lookup(ctx):
    def lookup(slug: str):
        try:
            return ctx.knowledge.get(slug)
        except Exception:
            return None

    return lookup


def defined_domains(facts, names: list[str] | None = None) -> list[domxml.Domain]:
    """Defined domains as Domain objects. Without libvirt: none (the daemon
    checks say why); with explicit names, an unknown name is a usage error."""
    try:
        doms = list(facts.domains)  # parsed once per run, shared by every check
    except FactUnavailable as exc:
        if names:
            raise ToolError(f"cannot look up domain {', '.join(names)}: {exc}") from None
        return []
    if names:
        by_name = {d.name: d for d in doms}
        infos = {i.name for i in facts.libvirt.domains()}
        missing = [n for n in names if n not in infos]
        if missing:
            raise ToolError(f"no domain named {', '.join(missing)} on {facts.resolved_uri}")
        doms = [by_name[n] for n in names if n in by_name]  # XML we cannot parse: nothing to check
    return doms


def target(ctx, facts, **more) -> dict:
    """The document's `target` (contract v2, see virtdoctor.render.report.make_target)."""
    from virtdoctor.render.report import FACTS_SOURCES, make_target

    uri = None
    if not ctx.offline and facts is not None:
        try:
            uri = facts.resolved_uri
        except Exception:
            uri = None
    source = getattr(facts, "facts_source", None)
    return make_target(ctx.run, root=ctx.root, uri=uri,
                       facts_source=source if source in FACTS_SOURCES else None, **more)


def run_checks(ctx, facts, checks, domains, *, host: bool = True) -> list[Finding]:
    return engine.run(checks, facts, domains, knowledge_lookup(ctx), host=host)

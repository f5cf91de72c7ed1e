"""`virtdoctor preflight FILE.xml [FILE.xml ...]` (or `-` for stdin): before a
domain is defined, everything that will go wrong with it, like a linter.

Each input is checked against libvirt's RelaxNG schema first, then by every
domain-scope check of the registry (built-in and plugins) against this host's
capabilities; with --offline only the XML-intrinsic checks run and the ones
that need the host skip with the reason. Nothing is ever defined.

One report for all inputs (one JSON document, command "preflight"), each
finding's subject `xml:PATH` (`xml:-` for stdin); per input, schema findings
come first. An input may hold several concatenated <domain> documents
(`virt-install --print-xml` writes two for an install: the install-time
definition, then the final one): each is checked, subjects `xml:PATH#1`,
`xml:PATH#2` ... (--fix leaves such inputs alone: it rewrites single-document
files only). Exit status: 2 when an error-severity check failed, 1 when only
warnings did, 0 when clean, and 3 when an input is unusable (unreadable, not
XML, not a domain, no <name>, entity declarations, too large, empty stdin).
Unusable inputs are reported one line each on stderr (and under "errors" in
the JSON document); the usable ones are still checked and reported, as a
linter does, but the run exits 3 so a provisioning script never proceeds.

`--fix` (with `--unsafe`: every XML edit is guest-visible) applies the fixes
that rewrite an input file itself, one at a time: backup, rewrite, re-check
from the rewritten file, restore on failure; then the report is that of the
fixed files, with the outcomes under "actions". It never defines a domain and
never touches anything but the input files (plans that would define a domain
or change the host are left to `virtdoctor fix`).
"""
from __future__ import annotations

import os
import sys

from virtdoctor import domxml
from virtdoctor.commands import _common
from virtdoctor.model import ToolError, exit_status
from virtdoctor.render import formats
from virtdoctor.render import json as jsonr

SCHEMA_SLUG = "schema-invalid"
COMPACT_FROM = 2000  # findings from which the JSON document is written compactly
EXIT_UNUSABLE = 3


def add_parser(sub) -> None:
    p = sub.add_parser("preflight", help="check domain XML files before defining them (schema + domain checks)",
                       description="Validate domain XML against libvirt's schema and run every domain check "
                                   "against this host, without defining anything. '-' reads stdin, e.g. "
                                   "'virt-install ... --print-xml | virtdoctor preflight -'.")
    p.add_argument("files", nargs="+", metavar="FILE", help="domain XML file, or - for stdin")
    _common.add_selection(p, domain=False)
    p.add_argument("--fix", action="store_true",
                   help="rewrite the XML files with the fixes that edit them (backup, re-check, roll back); "
                        "never defines anything")
    p.add_argument("--unsafe", action="store_true", help="with --fix: also guest-visible fixes (all XML edits are)")
    p.add_argument("--backup-dir", default=None, metavar="DIR",
                   help="with --fix: where backups of the files go (default /var/lib/virtdoctor/backups)")
    p.set_defaults(run=run)


def read_input(path: str, stdin=None) -> bytes:
    """The bytes of one input, at most MAX_XML_BYTES (+1 to detect more).
    ToolError with a one-line reason when it cannot be read."""
    limit = domxml.MAX_XML_BYTES + 1
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin
        if stream is None:
            raise ToolError("-: stdin is closed")
        try:
            buf = getattr(stream, "buffer", stream)
            data = buf.read(limit)
        except (OSError, ValueError) as exc:
            raise ToolError(f"-: cannot read stdin: {getattr(exc, 'strerror', None) or exc}") from None
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data or not data.strip():
            raise ToolError("-: stdin is empty, no domain XML to check")
        return data
    try:
        if os.path.isdir(path):
            raise ToolError(f"{path}: is a directory")
        with open(path, "rb") as fh:
            return fh.read(limit)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except PermissionError:
        raise ToolError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ToolError(f"{path}: cannot read: {exc.strerror or exc}") from None


MAX_DOCUMENTS = 64  # domain documents read from one input
_EXTRA_CONTENT = "Extra content at the end of the document"


def load(path: str, stdin=None) -> domxml.Domain:
    """Read and parse one single-document input into a Domain with subject xml:PATH."""
    doms = load_all(path, stdin)
    if len(doms) > 1:
        raise domxml.DomainXMLError(f"{path}: {len(doms)} domain documents where one was expected")
    return doms[0]


def load_all(path: str, stdin=None) -> list[domxml.Domain]:
    """Every <domain> document of one input, in order: `virt-install --print-xml` writes two
    concatenated documents for an install (the install-time definition, then the final one).
    One document: subject xml:PATH; several: xml:PATH#1, xml:PATH#2 ... Anything that is
    not a sequence of domain documents is a one-line DomainXMLError."""
    data = read_input(path, stdin)
    try:
        chunks = [data]
        first = domxml.parse_domain(data, path, subject=f"xml:{path}")
    except domxml.DomainXMLError as exc:
        if _EXTRA_CONTENT not in str(exc):
            raise
        chunks = split_documents(data, path)
        first = None
    doms = []
    for i, chunk in enumerate(chunks, 1):
        source = path if len(chunks) == 1 else f"{path}#{i}"
        dom = first if first is not None else domxml.parse_domain(chunk, source, subject=f"xml:{source}")
        if dom.name is None:
            raise domxml.DomainXMLError(f"{source}: the domain has no <name>: libvirt cannot define it")
        if path != "-" and len(chunks) == 1:
            dom.extra["file"] = os.path.abspath(path)  # fix plans rewrite the file itself
        doms.append(dom)
    return doms


def split_documents(data: bytes, source: str) -> list[bytes]:
    """Concatenated XML documents cut where the hardened parser (domxml's: no entities, no
    DTD, no network) reports extra content after a root element. Each piece is parsed again
    by the caller; a piece that is not a domain document is reported there."""
    from lxml import etree

    pieces: list[bytes] = []
    rest = data
    while rest.strip():
        if len(pieces) >= MAX_DOCUMENTS:
            raise domxml.DomainXMLError(f"{source}: more than {MAX_DOCUMENTS} XML documents")
        rest = rest.lstrip()
        try:
            etree.fromstring(rest, domxml._parser())
        except etree.XMLSyntaxError as exc:
            line, column = exc.position if exc.position else (0, 0)
            if not (exc.msg or "").startswith(_EXTRA_CONTENT) or line < 1:
                pieces.append(rest)  # not a concatenation: parse_domain names the problem
                break
            start = 0
            for _ in range(line - 1):
                start = rest.index(b"\n", start) + 1
            cut = start + max(column - 1, 0)
            if cut <= 0 or cut >= len(rest):
                pieces.append(rest)
                break
            pieces.append(rest[:cut])
            rest = rest[cut:]
            continue
        except ValueError:
            pieces.append(rest)
            break
        pieces.append(rest)
        break
    return pieces


def ordered_checks(checks: list) -> list:
    """Domain-scope checks, schema validation first."""
    doms = [c for c in checks if c.scope == "domain"]
    return [c for c in doms if c.slug == SCHEMA_SLUG] + [c for c in doms if c.slug != SCHEMA_SLUG]


PARALLEL_MIN = 64  # inputs from which an --offline run spreads over the CPUs
PROGRESS_FROM = 20  # documents from which a terminal shows progress
_WORK: tuple = ()


def preflight(ctx, facts, checks, domains: list[domxml.Domain]) -> list:
    """Findings for each domain in input order, schema findings first. Many
    inputs under --offline (no libvirt connection to share across a fork) are
    checked by one forked worker per CPU, each on a contiguous share."""
    workers = min(os.cpu_count() or 1, 4)
    if len(domains) >= PARALLEL_MIN and workers > 1 and facts.offline and hasattr(os, "fork"):
        try:
            return _parallel(ctx, facts, checks, domains, workers)
        except Exception:  # anything odd (a finding that does not pickle...): the plain way
            pass
    from virtdoctor.render.progress import tracker

    with tracker(ctx.err, "checking", len(domains), at_least=PROGRESS_FROM) as advance:
        return _run_range(ctx, facts, checks, domains, range(len(domains)), advance)


def _run_range(ctx, facts, checks, domains, indices, advance=None) -> list:
    from virtdoctor import engine

    lookup = _common.knowledge_lookup(ctx)
    findings = []
    for i in indices:
        for chk in checks:
            findings.extend(engine.run_check(chk, facts, domains[i], lookup))
        if advance is not None:
            advance(1)
    return findings


def _run_chunk(bounds: tuple[int, int]) -> list:
    ctx, facts, checks, domains = _WORK
    return _run_range(ctx, facts, checks, domains, range(*bounds))


def _parallel(ctx, facts, checks, domains, workers: int) -> list:
    import multiprocessing

    global _WORK
    try:
        from virtdoctor.facts.schema import domain_schema

        domain_schema(facts)  # compile once, before the fork
    except Exception:
        pass
    ctx.knowledge  # noqa: B018 - load once, before the fork
    step = -(-len(domains) // workers)
    bounds = [(i, min(i + step, len(domains))) for i in range(0, len(domains), step)]
    _WORK = (ctx, facts, checks, domains)
    try:
        with multiprocessing.get_context("fork").Pool(len(bounds)) as pool:
            parts = pool.map(_run_chunk, bounds)
    finally:
        _WORK = ()
    return [f for part in parts for f in part]


def run(args, ctx) -> int:
    checks = ordered_checks(_common.selected_checks(ctx, args))
    if args.files.count("-") > 1:
        raise ToolError("usage: '-' (stdin) can be given once")
    domains, errors = [], []
    seen = set()
    for path in args.files:
        if path in seen:
            continue
        seen.add(path)
        try:
            domains.extend(load_all(path))
        except ToolError as exc:
            errors.append({"input": path, "error": str(exc)})
    facts = ctx.facts()
    actions = []
    if getattr(args, "fix", False):
        actions = fix_files(ctx, facts, checks, domains, unsafe=args.unsafe, backup_dir=args.backup_dir)
        domains = [reload(d) for d in domains]
    findings = preflight(ctx, facts, checks, domains)
    if actions and ctx.fmt == "text":
        for a in actions:
            print(f"{a['id']} {a['subject']}: {a['summary']} -> {a['status']}"
                  + (f" ({a['detail']})" if a.get("detail") else ""), file=ctx.out)
    for e in errors:
        print(f"virtdoctor: {e['error']}", file=ctx.err)
    doc = None
    if ctx.fmt != "text" or ctx.run.output:
        target = _common.target(ctx, facts, inputs=[d.source for d in domains])
        extra = {"actions": actions} if getattr(args, "fix", False) else {}
        doc = jsonr.document("preflight", target, findings, errors=errors, **extra)
    if ctx.fmt in formats.EXTRA:
        code = EXIT_UNUSABLE if errors else exit_status(findings)
        formats.emit(ctx, doc, code, checks=checks, domains=domains)
    elif ctx.fmt == "json":
        if len(findings) > COMPACT_FROM:
            # a lint of many files: compact JSON (json's C encoder; the indented
            # encoder is pure Python and dominated the corpus run)
            import json

            ctx.out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            jsonr.dump(doc, ctx.out)
    elif domains:
        from virtdoctor.render.text import render_findings

        render_findings(ctx.console, findings, verbose=ctx.verbose,
                        fix_hint="'virtdoctor preflight --fix FILE...' rewrites the files with the safe fixes "
                                 "(add --unsafe for guest-visible ones); nothing is defined.")
    if errors:
        return EXIT_UNUSABLE
    return exit_status(findings)


def reload(dom: domxml.Domain) -> domxml.Domain:
    """The domain read again from its file (after --fix rewrote it)."""
    path = dom.extra.get("file")
    return load(dom.source) if path else dom


def _file_plan(p, dom) -> bool:
    """Only plans that rewrite this very input file are applied by preflight:
    never a define, never anything else on the host."""
    from virtdoctor.remedy import WriteFile

    return bool(p.actions) and all(isinstance(a, WriteFile) and a.path == dom.extra.get("file") for a in p.actions)


def fix_files(ctx, facts, checks, domains, *, unsafe: bool, backup_dir: str | None) -> list[dict]:
    """Apply, file by file and one at a time, the fixes that rewrite the
    input file, re-checking each from the rewritten file and restoring the
    backup when the re-check still fails."""
    from virtdoctor import engine, remedy
    from virtdoctor.commands.fix import FixItem, run_fixes
    from virtdoctor.model import Status

    from virtdoctor.root import Root

    lookup = _common.knowledge_lookup(ctx)
    env = remedy.Env(root="/")  # the input files are this machine's files, named as given
    base = backup_dir or Root(ctx.root).real(remedy.DEFAULT_BACKUP_DIR)  # backups below --root
    outcomes: list[dict] = []
    for dom in domains:
        if not dom.extra.get("file"):
            continue
        tried: set[tuple[str, str]] = set()
        for _round in range(len(checks) + 1):
            current = reload(dom)
            todo = None
            for chk in checks:
                if not chk.has_fixer:
                    continue
                for f in engine.run_check(chk, facts, current, lookup):
                    if f.status is not Status.FAIL or (chk.slug, f.message) in tried:
                        continue
                    p = f.plan  # the check's plan (or its fixer's, built once by the engine)
                    if p is not None and _file_plan(p, current):
                        todo = (chk, f, p)
                        break
                if todo:
                    break
            if todo is None:
                break
            chk, f, p = todo
            tried.add((chk.slug, f.message))

            def recheck(chk=chk, subject=f.subject):
                fresh = reload(dom)
                rs = [r for r in engine.run_check(chk, facts, fresh, lookup) if r.subject == subject]
                bad = [r for r in rs if r.status in (Status.FAIL, Status.ERROR)]
                return (not bad, bad[0].message if bad else "")

            outcomes += run_fixes([FixItem(f, chk, current, p, recheck=recheck)], env, backup_base=base,
                                  lock_path=None, unsafe=unsafe, apply=True)
    return outcomes

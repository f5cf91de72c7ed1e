"""`virtdoctor fix`: plans for every failing check that has a fixer; with
--yes (or an answer at the prompt) applies them: lock, backup, apply, re-check,
roll back on failure. Unsafe fixes (guest-visible changes) need --unsafe too.
Without a terminal and without --yes it only prints the plans."""
from __future__ import annotations

import sys

from rich.markup import escape

from virtdoctor import domxml, engine, remedy
from virtdoctor.commands import _common
from virtdoctor.model import Auto, FactUnavailable, Status, ToolError
from virtdoctor.render import json as jsonr


def add_parser(sub) -> None:
    p = sub.add_parser("fix", help="show fix plans and apply them (backup, re-check, roll back)")
    _common.add_selection(p)
    p.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    p.add_argument("--unsafe", action="store_true", help="also apply fixes that change guest-visible configuration")
    p.add_argument("--dry-run", action="store_true", help="only show the plans")
    p.add_argument("--backup-dir", default=None, metavar="DIR",
                   help=f"where backups go (default {remedy.DEFAULT_BACKUP_DIR} below --root)")
    p.set_defaults(run=run)


def _plans(ctx, args):
    checks = _common.selected_checks(ctx, args)
    facts = ctx.facts()
    domains = _common.defined_domains(facts, args.domain) if any(c.scope == "domain" for c in checks) else []
    by_subject = {d.subject: d for d in domains}
    findings = _common.run_checks(ctx, facts, checks, domains)
    registry = {}
    for c in checks:
        registry.setdefault((c.slug, "domain" if c.scope == "domain" else "host"), c)
    items = []
    for f in findings:
        if f.status is not Status.FAIL:
            continue
        dom = by_subject.get(f.subject)
        chk = registry.get((f.id, "domain" if dom is not None else "host"))
        if chk is None:
            continue
        if f.plan is not None:  # the check attached its plan: no fixer to run again
            items.append((f, chk, dom, f.plan, ""))
            continue
        if chk.fixer_func is None:
            continue
        try:
            p = chk.fixer_func(f, facts, dom) if dom is not None else chk.fixer_func(f, facts)
        except FactUnavailable as exc:
            items.append((f, chk, dom, None, str(exc)))
            continue
        if p is not None:
            items.append((f, chk, dom, p, ""))
    return facts, findings, items


def _recheck(ctx, chk, subject, dom_name, key=None):
    def recheck():
        fresh = ctx.facts()
        dom = None
        if dom_name is not None:
            info = fresh.libvirt.domain(dom_name)
            if info is None:
                return False, f"domain {dom_name} disappeared"
            dom = domxml.from_info(info)
        results = [r for r in engine.run_check(chk, fresh, dom, _common.knowledge_lookup(ctx)) if r.subject == subject]
        bad = [r for r in results if r.status in (Status.FAIL, Status.ERROR)]
        if key is not None and not any(r.status is Status.ERROR for r in bad):
            # one of several keyed results (a pool, a network): only that one has to pass
            bad = [r for r in bad if r.key == key]
            if not bad:
                return True, ""
        if bad:
            return False, bad[0].message
        if not any(r.status is Status.PASS for r in results):
            return False, "; ".join(r.message for r in results) or "no result"
        return True, ""

    return recheck


def run(args, ctx) -> int:
    facts, findings, items = _plans(ctx, args)
    env = remedy.Env(root=ctx.root, accounts=facts.accounts)
    env.libvirt_open = lambda: _open_rw(facts)
    backup_base = args.backup_dir or env.path(remedy.DEFAULT_BACKUP_DIR)
    interactive = sys.stdin.isatty() and hasattr(ctx.out, "isatty") and ctx.out.isatty()
    outcomes: list[dict] = []
    text = ctx.fmt != "json"
    con = ctx.console
    if not items and text:
        failing = [f for f in findings if f.status is Status.FAIL]
        con.print("Nothing virtdoctor can fix automatically." if failing else "Nothing to fix: every check passes.")
        for f in failing:
            con.print(f"  {escape(f.id)} {escape(f.subject)}: {escape(f.fix.summary if f.fix else f.message)}")
    lock = None
    try:
        for f, chk, dom, p, why in items:
            base = {"id": f.id, "subject": f.subject}
            if p is None:
                outcomes.append({**base, "status": "skipped", "summary": why, "applied": False, "verified": False,
                                 "backup": None, "auto": "manual", "commands": [], "diff": ""})
                continue
            diff = p.diff(env)
            if text:
                con.print(f"\n[bold]{escape(f.id)}[/bold] {escape(f.subject)}: {escape(f.message)}")
                con.print(f"  plan ({p.auto.value}): {escape(p.summary)}")
                for cmd in p.commands:
                    con.print(f"    $ {escape(cmd)}")
                for note in p.notes:
                    con.print(f"  note: {escape(note)}")
                if diff:
                    con.print(escape(diff.rstrip("\n")), style="dim")
            entry = {**base, "summary": p.summary, "auto": p.auto.value, "commands": p.commands, "diff": diff,
                     "notes": p.notes, "applied": False, "verified": False, "backup": None}
            if p.auto is Auto.MANUAL:
                entry["status"] = "skipped"
                entry["detail"] = "manual: advice only"
            elif p.auto is Auto.UNSAFE and not args.unsafe:
                entry["status"] = "skipped"
                entry["detail"] = "unsafe (guest-visible change): needs --unsafe as well"
            elif args.dry_run or (not args.yes and not interactive):
                entry["status"] = "planned"
            elif not args.yes and not _ask(con, f"Apply this fix for {f.id}?"):
                entry["status"] = "skipped"
                entry["detail"] = "declined"
            else:
                if lock is None:
                    lock = remedy.FixLock(env.path(remedy.LOCK_PATH)).__enter__()
                dom_name = dom.name if dom is not None else None
                recheck = _recheck(ctx, chk, f.subject, dom_name, f.key)
                if _passes_now(recheck):
                    # the plan was made before the lock: another fix run (or a fix above in
                    # this one) repaired it meanwhile, and a stale plan must not run
                    entry["status"] = "skipped"
                    entry["detail"] = "passes now: fixed meanwhile"
                    entry["passes"] = True
                else:
                    out = remedy.apply_plan(p, env, f.id, f.subject, recheck, backup_base)
                    entry.update(out.to_dict())
            if text and entry["status"] != "planned":
                con.print(f"  -> {entry['status']}" + (f": {escape(entry.get('detail', ''))}" if entry.get("detail") else "")
                          + (f" [dim](backup {escape(entry['backup'])})[/dim]" if entry.get("backup") else ""))
            outcomes.append(entry)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    if text and any(o["status"] == "planned" for o in outcomes):
        con.print("\nNothing was changed. Apply with 'virtdoctor fix --yes' (add --unsafe for guest-visible fixes).")
    if ctx.fmt == "json" or ctx.run.output:  # --output FILE gets the document in any format
        doc = jsonr.document("fix", _common.target(ctx, facts), findings, actions=outcomes)
        if ctx.fmt == "json":
            jsonr.dump(doc, ctx.out)
    statuses = {o["status"] for o in outcomes if not o.get("passes")}
    if statuses & {"failed", "rolled-back"}:
        return 2
    if statuses & {"planned", "skipped"}:
        return 1
    fixed = {(o["id"], o["subject"]) for o in outcomes if o["status"] == "fixed" or o.get("passes")}
    if any(f.status is Status.FAIL and (f.id, f.subject) not in fixed for f in findings):
        return 1  # failures remain that no plan covers (manual advice only)
    return 0


def _passes_now(recheck) -> bool:
    try:
        return recheck()[0]
    except Exception:  # cannot tell: let the plan run, its own re-check decides
        return False


def _ask(con, question: str) -> bool:
    try:
        answer = con.input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _open_rw(facts):
    from virtdoctor.facts.libvirt import Writable

    try:
        return Writable(facts.resolved_uri, timeout=max(facts.timeout, 30.0)).open()
    except FactUnavailable as exc:
        raise remedy.ActionError(str(exc)) from exc
    except Exception as exc:
        raise ToolError(f"cannot open {facts.resolved_uri} read-write: {exc}") from exc


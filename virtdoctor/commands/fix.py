"""`virtdoctor fix`: plans for every failing check that has one; with --yes
(or an answer at the prompt) applies them: lock, backup, apply, re-check,
roll back on failure. Unsafe fixes (guest-visible changes) need --unsafe too.
Without a terminal and without --yes it only prints the plans.

`--dry-run --format json` prints every plan as data; `--plan FILE` applies
the plans of such a document after checking that each check still fails the
same way (same slug, subject and plan). `--list-backups` lists the backups
of earlier fixes and `--undo BACKUP` restores one, refusing when the host is
no longer as that fix left it. `run_fixes` serves `fix` and `preflight --fix`."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from rich.markup import escape

from virtdoctor import domxml, engine, remedy
from virtdoctor.commands import _common
from virtdoctor.model import Auto, FactUnavailable, Status, ToolError
from virtdoctor.render import json as jsonr


def add_parser(sub) -> None:
    p = sub.add_parser("fix", help="show fix plans and apply them (backup, re-check, roll back, undo)")
    _common.add_selection(p)
    p.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    p.add_argument("--unsafe", action="store_true", help="also apply fixes that change guest-visible configuration")
    p.add_argument("--dry-run", action="store_true", help="only show the plans (with --format json: as data)")
    p.add_argument("--plan", metavar="FILE", default=None,
                   help="apply the plans saved by 'fix --dry-run --format json' (- for stdin), each only "
                        "when its check still fails the same way")
    p.add_argument("--list-backups", action="store_true", help="list the backups of earlier fixes")
    p.add_argument("--undo", metavar="BACKUP", default=None,
                   help="restore what the fix of BACKUP changed (a name from --list-backups, or its path)")
    p.add_argument("--backup-dir", default=None, metavar="DIR",
                   help=f"where backups go (default {remedy.DEFAULT_BACKUP_DIR} below --root)")
    p.set_defaults(run=run)


@dataclass
class FixItem:
    """One failing finding and its plan (None: `why` says why there is none)."""

    finding: Any
    check: Any
    dom: Any
    plan: remedy.FixPlan | None
    why: str = ""
    recheck: Callable[[], tuple[bool, str]] | None = None
    approved: bool = False  # reviewed already (a saved plan that still matches)


def gather(ctx, args) -> tuple[Any, list, list[FixItem]]:
    """Run the selected checks once; each failure's plan is the one its check
    attached (or its fixer built, once, while the finding was made)."""
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
        if chk is None or f.plan is None:
            continue
        items.append(FixItem(f, chk, dom, f.plan, recheck=recheck_for(ctx, chk, f.subject,
                                                                      dom.name if dom is not None else None,
                                                                      f.key)))
    return facts, findings, items


def recheck_for(ctx, chk, subject, dom_name, key=None):
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


def run_fixes(items: list[FixItem], env: remedy.Env, *, backup_base: str, lock_path: str | None,
              unsafe: bool, apply: bool, confirm: Callable[[FixItem], bool] | None = None,
              show: Callable[[FixItem, str], None] | None = None,
              done: Callable[[dict], None] | None = None) -> list[dict]:
    """Decide and apply, one item at a time: manual plans are advice, unsafe
    ones need `unsafe`; with `apply` (or a `confirm` that says yes) the plan
    runs under the lock: backup, apply, re-check, roll back. One outcome
    (the JSON `actions` entry) per item."""
    outcomes: list[dict] = []
    lock = None
    try:
        for it in items:
            f, p = it.finding, it.plan
            base = {"id": f.id, "subject": f.subject}
            if p is None:
                entry = {**base, "status": "skipped", "summary": it.why, "applied": False, "verified": False,
                         "backup": None, "auto": "manual", "commands": [], "diff": "", "plan": None}
                outcomes.append(entry)
                if done:
                    done(entry)
                continue
            diff = p.diff(env)
            if show:
                show(it, diff)
            try:
                plan_doc = p.to_dict()
            except TypeError:
                plan_doc = None
            entry = {**base, "summary": p.summary, "auto": p.auto.value, "commands": p.commands, "diff": diff,
                     "notes": list(p.notes), "plan": plan_doc, "applied": False, "verified": False,
                     "backup": None}
            if it.why and not it.approved and it.why.startswith("stale"):
                entry.update(status="failed", detail=it.why)
            elif p.auto is Auto.MANUAL:
                entry.update(status="skipped", detail="manual: advice only")
            elif p.auto is Auto.UNSAFE and not unsafe:
                entry.update(status="skipped", detail="unsafe (guest-visible change): needs --unsafe as well")
            elif not apply and confirm is None:
                entry["status"] = "planned"
            elif not apply and not confirm(it):
                entry.update(status="skipped", detail="declined")
            else:
                if lock is None and lock_path:
                    lock = remedy.FixLock(lock_path).__enter__()
                if _passes_now(it.recheck):
                    # the plan was made before the lock: another fix run (or a fix above in
                    # this one) repaired it meanwhile, and a stale plan must not run
                    entry.update(status="skipped", detail="passes now: fixed meanwhile", passes=True)
                else:
                    out = remedy.apply_plan(p, env, f.id, f.subject, it.recheck, backup_base)
                    entry.update(out.to_dict())
            outcomes.append(entry)
            if done:
                done(entry)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return outcomes


def _passes_now(recheck) -> bool:
    if recheck is None:
        return False
    try:
        return recheck()[0]
    except Exception:  # cannot tell: let the plan run, its own re-check decides
        return False


def backup_base(ctx, args) -> str:
    from virtdoctor.root import Root

    return args.backup_dir or Root(ctx.root).real(remedy.DEFAULT_BACKUP_DIR)


def _env(ctx, facts) -> remedy.Env:
    env = remedy.Env(root=ctx.root, accounts=facts.accounts)
    env.libvirt_open = lambda: _open_rw(facts)
    return env


def run(args, ctx) -> int:
    if args.list_backups:
        return list_backups(args, ctx)
    if args.undo:
        return undo(args, ctx)
    facts, findings, items = gather(ctx, args)
    if args.plan:
        items = match_saved(items, findings, load_saved(args.plan, ctx))
    env = _env(ctx, facts)
    interactive = sys.stdin.isatty() and hasattr(ctx.out, "isatty") and ctx.out.isatty()
    text = ctx.fmt != "json"
    con = ctx.console
    if not items and text:
        failing = [f for f in findings if f.status is Status.FAIL]
        con.print("Nothing virtdoctor can fix automatically." if failing else "Nothing to fix: every check passes.")
        for f in failing:
            con.print(f"  {escape(f.id)} {escape(f.subject)}: {escape(f.fix.summary if f.fix else f.message)}")

    def show(it: FixItem, diff: str) -> None:
        if not text:
            return
        f, p = it.finding, it.plan
        con.print(f"\n[bold]{escape(f.id)}[/bold] {escape(f.subject)}: {escape(f.message)}")
        con.print(f"  plan ({p.auto.value}): {escape(p.summary)}")
        for cmd in p.commands:
            con.print(f"    $ {escape(cmd)}")
        for note in p.notes:
            con.print(f"  note: {escape(note)}")
        if diff:
            con.print(escape(diff.rstrip("\n")), style="dim")

    def done(entry: dict) -> None:
        if text and entry["status"] != "planned":
            con.print(f"  -> {entry['status']}" + (f": {escape(entry.get('detail', ''))}" if entry.get("detail") else "")
                      + (f" [dim](backup {escape(entry['backup'])})[/dim]" if entry.get("backup") else ""))
            for err in entry.get("rollback_errors") or ():
                con.print(f"  rollback error: {escape(err)}")

    apply = bool(args.plan) or (args.yes and not args.dry_run)
    confirm = None
    if not apply and interactive and not args.dry_run:
        confirm = lambda it: _ask(con, f"Apply this fix for {it.finding.id}?")  # noqa: E731
    outcomes = run_fixes(items, env, backup_base=backup_base(ctx, args), lock_path=env.path(remedy.LOCK_PATH),
                         unsafe=args.unsafe, apply=apply, confirm=confirm, show=show, done=done)
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
    if args.plan:
        return 0
    if any(f.status is Status.FAIL and (f.id, f.subject) not in fixed for f in findings):
        return 1  # failures remain that no plan covers (manual advice only)
    return 0


# -- saved plans ------------------------------------------------------------------
def load_saved(path: str, ctx) -> list[tuple[str, str, remedy.FixPlan]]:
    """(slug, subject, plan) of every plan in a `fix --dry-run --format json` document."""
    try:
        if path == "-":
            doc = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
    except FileNotFoundError:
        raise ToolError(f"--plan {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ToolError(f"--plan {path}: not a JSON document: {exc}") from None
    actions = doc.get("actions") if isinstance(doc, dict) else None
    if not isinstance(actions, list):
        raise ToolError(f"--plan {path}: no 'actions' (save the output of 'virtdoctor fix --dry-run --format json')")
    out = []
    for a in actions:
        if isinstance(a, dict) and a.get("plan"):
            try:
                out.append((a["id"], a["subject"], remedy.FixPlan.from_dict(a["plan"])))
            except (KeyError, ValueError) as exc:
                raise ToolError(f"--plan {path}: {a.get('id', '?')}: {exc}") from None
    if not out:
        raise ToolError(f"--plan {path}: holds no plan to apply")
    return out


def match_saved(items: list[FixItem], findings: list, saved) -> list[FixItem]:
    """The saved plans whose check still fails the same way (same slug, subject
    and a freshly built plan equal to the saved one), approved; a stale one is
    refused ("failed"), one whose check passes now is skipped."""
    by_key = {(it.finding.id, it.finding.subject): it for it in items}
    status = {(f.id, f.subject): f for f in findings}
    out = []
    for slug, subject, splan in saved:
        it = by_key.get((slug, subject))
        if it is None:
            f = status.get((slug, subject))
            if f is not None and f.status is Status.PASS:
                out.append(FixItem(f, None, None, splan, approved=True,
                                   recheck=lambda: (True, "")))
                continue
            raise ToolError(f"saved plan for {slug} {subject}: that check does not fail here now "
                            f"({f.status.value if f else 'not run'}); nothing applied")
        if it.plan != splan:
            it = FixItem(it.finding, it.check, it.dom, splan, why="stale plan: the check now plans something "
                         "else (review 'fix --dry-run' again)", recheck=it.recheck)
        else:
            it.approved = True
        out.append(it)
    return out


# -- backups ---------------------------------------------------------------------
def list_backups(args, ctx) -> int:
    base = backup_base(ctx, args)
    backups = remedy.list_backups(base)
    rows = [{"name": os.path.basename(b.directory), "path": b.directory, "created": b.created, "id": b.slug,
             "subject": b.subject, "summary": b.summary, "state": b.state,
             "actions": [a.get("command", a.get("kind")) for a in (b.plan or {}).get("actions", [])],
             "errors": b.errors} for b in backups]
    if ctx.fmt == "json":
        jsonr.dump(jsonr.document("fix", {"root": ctx.root, "backups": base}, [], backups=rows), ctx.out)
        return 0
    con = ctx.console
    if not rows:
        con.print(f"No backups in {escape(base)}.")
        return 0
    for r in rows:
        con.print(f"{escape(r['name'])}  {escape(r['created'])}  {escape(r['id'])}  {escape(r['subject'])}  "
                  f"[bold]{escape(r['state'])}[/bold]")
        for a in r["actions"]:
            con.print(f"    $ {escape(a)}")
    return 0


def undo(args, ctx) -> int:
    base = backup_base(ctx, args)
    target = args.undo
    directory = target if os.sep in target else os.path.join(base, target)
    if not os.path.isdir(directory):
        raise ToolError(f"--undo {target}: no such backup in {base} (see 'virtdoctor fix --list-backups')")
    facts = ctx.facts()
    env = _env(ctx, facts)
    with remedy.FixLock(env.path(remedy.LOCK_PATH)):
        backup, errors = remedy.undo(env, directory)
    name = os.path.basename(directory.rstrip("/"))
    if ctx.fmt == "json":
        entry = {"id": backup.slug, "subject": backup.subject, "summary": backup.summary, "backup": directory,
                 "status": "undone" if not errors else "failed", "errors": errors,
                 "files": [e["path"] for e in backup.files], "changes": backup.changes}
        jsonr.dump(jsonr.document("fix", _common.target(ctx, facts), [], undo=entry), ctx.out)
    else:
        con = ctx.console
        if errors:
            con.print(f"undo of {escape(name)} incomplete:")
            for e in errors:
                con.print(f"  error: {escape(e)}")
        else:
            con.print(f"undone {escape(name)} ({escape(backup.slug)} {escape(backup.subject)}): restored "
                      f"{len(backup.files)} path(s), {len(backup.changes)} change(s)")
    return 2 if errors else 0


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

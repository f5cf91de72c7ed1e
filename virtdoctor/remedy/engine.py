"""The remedy engine: lock, backup, apply, re-check, roll back; undo later.

Everything it writes goes through the run's `Root` (virtdoctor.root): the
files a plan changes, the backup directory, its manifest and the lock file
all resolve below --root. The backup directory holds a manifest (JSON) saying
what each applied action changed: files (content copy, mode, owner, POSIX ACL
xattr), domain definitions, network state, commands with their undo. After a
fix is verified the manifest also records the state the fix left, so `fix
--undo BACKUP` can refuse when something changed the host since.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from virtdoctor.facts.files import ACL_XATTR
from virtdoctor.model import ToolError
from virtdoctor.remedy.env import Env
from virtdoctor.remedy.executors import EXECUTORS, change_state, undo_change
from virtdoctor.remedy.files import atomic_write
from virtdoctor.remedy.plan import Action, ActionError, FixPlan

DEFAULT_BACKUP_DIR = "/var/lib/virtdoctor/backups"
LOCK_PATH = "/run/virtdoctor-fix.lock"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2

# -- files: state, backup, restore ------------------------------------------------
def file_state(real: str) -> dict[str, Any]:
    """What a path is now: absent, or type, mode, owner, ACL and content hash."""
    try:
        st = os.lstat(real)
    except (FileNotFoundError, NotADirectoryError):
        return {"exists": False}
    kind = ("file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else
            "link" if stat.S_ISLNK(st.st_mode) else "special")
    meta: dict[str, Any] = {"exists": True, "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid,
                            "type": kind}
    if kind == "special":
        meta["rdev"] = st.st_rdev
    try:
        meta["acl"] = os.getxattr(real, ACL_XATTR, follow_symlinks=False).hex()
    except OSError:
        meta["acl"] = None
    if meta["type"] == "file":
        h = hashlib.sha256()
        with open(real, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        meta["sha256"] = h.hexdigest()
    return meta


def backup_path(env: Env, host_path: str, record: list[dict]) -> None:
    """Record a path's content (regular files and dirs' metadata) before change.
    The path is recorded resolved inside the root, so the restore works on
    exactly what was changed (never on a symlink leading elsewhere)."""
    host_path = env.resolve(host_path)
    real = env.path(host_path)
    if not os.path.lexists(real):
        # an action creating the path also creates its missing parents: record the
        # highest missing one, so that a rollback removes all it added
        parent = os.path.dirname(host_path)
        while parent not in ("/", "") and not os.path.lexists(env.path(parent)):
            host_path, parent = parent, os.path.dirname(parent)
    if any(r["path"] == host_path for r in record):
        return
    real = env.path(host_path, follow=False)
    entry: dict[str, Any] = {"path": host_path}
    state = file_state(real)
    if not state["exists"]:
        entry["absent"] = True
    else:
        entry.update({k: state[k] for k in ("mode", "uid", "gid", "acl")})
        if state["type"] == "file":
            copy = os.path.join(env.backup_dir, "files", host_path.lstrip("/"))
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copy2(real, copy)
            entry["copy"] = os.path.relpath(copy, env.backup_dir)
            entry["sha256"] = state["sha256"]
    record.append(entry)


def restore_path(env: Env, entry: dict) -> None:
    real = env.path(entry["path"], follow=False)
    if entry.get("absent"):
        if os.path.isdir(real) and not os.path.islink(real):
            shutil.rmtree(real)
        elif os.path.lexists(real):
            os.unlink(real)
        return
    if entry.get("copy"):
        copy = os.path.join(env.backup_dir, entry["copy"]) if not os.path.isabs(entry["copy"]) else entry["copy"]
        with open(copy, "rb") as fh:
            atomic_write(real, fh.read(), entry["mode"], entry["uid"], entry["gid"])
    if os.path.lexists(real):
        os.chmod(real, entry["mode"])
        if os.geteuid() == 0 or (entry["uid"], entry["gid"]) != (os.lstat(real).st_uid, os.lstat(real).st_gid):
            os.chown(real, entry["uid"], entry["gid"], follow_symlinks=False)
        if entry.get("acl"):
            os.setxattr(real, ACL_XATTR, bytes.fromhex(entry["acl"]))
        else:
            try:
                os.removexattr(real, ACL_XATTR)
            except OSError:
                pass


# -- the backup and its manifest ---------------------------------------------------
@dataclass
class Backup:
    """One fix's backup directory and manifest: `files` (path, state before,
    copy), `changes` (domains, networks, commands, in the order applied),
    `after` (the state the fix left, for undo), `state` and `errors`."""

    directory: str
    slug: str = ""
    subject: str = ""
    summary: str = ""
    plan: dict | None = None
    files: list[dict] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)
    after: dict = field(default_factory=dict)
    state: str = "applying"
    errors: list[str] = field(default_factory=list)
    created: str = ""
    root: str = "/"

    def save(self) -> None:
        doc = {"format": MANIFEST_FORMAT, "created": self.created, "slug": self.slug, "subject": self.subject,
               "summary": self.summary, "root": self.root, "state": self.state, "plan": self.plan,
               "files": self.files, "changes": self.changes, "after": self.after, "errors": self.errors}
        path = os.path.join(self.directory, MANIFEST)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        os.replace(tmp, path)

    def save_manifest(self, extra: dict | None = None) -> None:  # older name
        self.save()

    @classmethod
    def load(cls, directory: str) -> "Backup":
        try:
            with open(os.path.join(directory, MANIFEST), encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise ToolError(f"{directory}: not a virtdoctor backup (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise ToolError(f"{directory}: unreadable manifest: {exc}") from None
        return cls(directory, doc.get("slug", ""), doc.get("subject", ""), doc.get("summary", ""), doc.get("plan"),
                   doc.get("files", []), doc.get("changes", []), doc.get("after", {}), doc.get("state", "?"),
                   doc.get("errors", []), doc.get("created", ""), doc.get("root", "/"))


def new_backup_dir(base: str, slug: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = os.path.join(base, f"{stamp}-{slug}-{os.getpid()}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(base, f"{stamp}-{slug}-{os.getpid()}.{n}")
    os.makedirs(path, mode=0o700)
    return path


class FixLock:
    """One `virtdoctor fix` at a time: an flock on a lock file below the root."""

    def __init__(self, path: str, wait: float = 30.0):
        self.path, self.wait, self.fd = path, wait, None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise ToolError(f"another virtdoctor fix holds {self.path}; try again later")
                time.sleep(0.1)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@dataclass
class Outcome:
    slug: str
    subject: str
    summary: str
    status: str  # planned | fixed | rolled-back | failed | skipped
    applied: bool = False
    verified: bool = False
    backup: str | None = None
    detail: str = ""
    commands: list[str] = field(default_factory=list)
    rollback_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.slug, "subject": self.subject, "summary": self.summary, "status": self.status,
                "applied": self.applied, "verified": self.verified, "backup": self.backup,
                "detail": self.detail, "commands": self.commands, "rollback_errors": self.rollback_errors}


# -- apply, re-check, roll back -------------------------------------------------------
def apply_plan(fplan: FixPlan, env: Env, slug: str, subject: str, recheck: Callable[[], tuple[bool, str]],
               backup_base: str) -> Outcome:
    """Back up, apply, re-check, roll back on failure. `recheck` returns
    (passes, message) from a fresh run of the check on fresh facts."""
    env.backup_dir = new_backup_dir(backup_base, slug)
    try:
        plan_doc = fplan.to_dict()
    except TypeError:  # a plugin's action that is code, not data
        plan_doc = None
    backup = Backup(env.backup_dir, slug, subject, fplan.summary, plan_doc,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    root=env.root)
    env.backup = backup
    out = Outcome(slug, subject, fplan.summary, "failed", backup=env.backup_dir, commands=fplan.commands)
    done: list[Action] = []
    try:
        backup.save()
        for action in fplan.actions:
            for p in action.touches:
                backup_path(env, p, backup.files)
            backup.save()
            action.apply(env)
            done.append(action)
        out.applied = True
        try:
            ok, message = recheck()
        except Exception as exc:  # e.g. FactUnavailable: the fix is not proven, undo it
            ok, message = False, f"{type(exc).__name__}: {exc}"
        out.verified = ok
        if ok:
            out.status = "fixed"
            backup.state = "fixed"
            try:
                backup.after = after_state(env, backup)
            except Exception as exc:  # the fix stands; only its undo will lack the check
                backup.errors.append(f"recording the state after the fix: {exc}")
            backup.save()
            return out
        out.detail = f"re-check still fails: {message}"
    except Exception as exc:  # whatever an action raises, what was done is undone
        out.detail = f"{'failed' if isinstance(exc, ActionError) else type(exc).__name__}: {exc}"
        out.applied = bool(done)
    except BaseException:  # interrupted: put the host back, then stop
        rollback(env, backup, done)
        raise
    finally:
        env.backup = None
    out.rollback_errors = rollback(env, backup, done)
    out.status = "rolled-back" if out.applied or done else "failed"
    if out.rollback_errors:
        out.detail += "; rollback incomplete: " + "; ".join(out.rollback_errors)
    backup.state = out.status
    backup.errors.extend(out.rollback_errors)
    try:
        backup.save()
    except OSError as exc:
        out.rollback_errors.append(f"manifest: {exc}")
    return out


def rollback(env: Env, backup: Backup, done: list[Action]) -> list[str]:
    """Undo what was done: third-party actions' own rollback, the recorded
    changes (domains, networks, commands) newest first, then the files. Every
    error is returned (and so reported), none swallowed."""
    errors: list[str] = []
    for action in reversed(done):
        if type(action) in EXECUTORS:
            continue
        try:
            action.rollback(env, backup)
        except Exception as exc:
            errors.append(f"{action.command()}: {exc}")
    errors.extend(restore(env, backup))
    return errors


def restore(env: Env, backup: Backup) -> list[str]:
    errors: list[str] = []
    env.backup_dir = backup.directory
    for change in reversed(backup.changes):
        try:
            undo_change(env, change)
        except Exception as exc:
            errors.append(f"{change.get('kind')} {change.get('name', '')}: {exc}".replace("  ", " "))
    for entry in reversed(backup.files):
        try:
            restore_path(env, entry)
        except OSError as exc:
            errors.append(f"{entry['path']}: {exc.strerror or exc}")
    return errors


def after_state(env: Env, backup: Backup) -> dict:
    """The state the fix left: each backed-up path, each changed domain and network."""
    files = {}
    for e in backup.files:
        real = env.path(e["path"], follow=False)
        files[e["path"]] = st = file_state(real)
        if e.get("absent") and st.get("type") == "dir":  # created by the fix: what is in it counts too
            st["entries"] = sorted(os.path.relpath(os.path.join(d, n), real)
                                   for d, dirs, names in os.walk(real) for n in [*dirs, *names])
    changes = [change_state(env, c) for c in backup.changes]
    return {"files": files, "changes": changes}


# -- undo and the list of backups ----------------------------------------------------------
def list_backups(base: str) -> list[Backup]:
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ToolError(f"cannot list {base}: {exc.strerror or exc}") from None
    out = []
    for name in names:
        d = os.path.join(base, name)
        if os.path.isfile(os.path.join(d, MANIFEST)):
            try:
                out.append(Backup.load(d))
            except ToolError:
                continue
    return out


def undo(env: Env, directory: str) -> tuple[Backup, list[str]]:
    """Restore one backup; ToolError (exit 3) with a one-line reason when the
    host no longer is as the fix left it, or the fix was not left applied."""
    backup = Backup.load(directory)
    name = os.path.basename(directory.rstrip("/"))
    if backup.state == "undone":
        raise ToolError(f"backup {name} was already undone")
    if backup.state != "fixed":
        raise ToolError(f"backup {name}: the fix was {backup.state}, nothing of it is left to undo")
    if not backup.after:
        raise ToolError(f"backup {name}: no record of the state the fix left; refusing to undo blindly")
    env.backup_dir = backup.directory
    now = after_state(env, backup)
    for path, was in backup.after.get("files", {}).items():
        cur = now["files"].get(path)
        if cur != was:
            what = _what_changed(was, cur or {"exists": False})
            raise ToolError(f"cannot undo {name}: {path} changed since the fix ({what})")
    for was, cur in zip(backup.after.get("changes", []), now["changes"]):
        if was != cur:
            raise ToolError(f"cannot undo {name}: {was.get('kind')} {was.get('name', '')} changed since the fix "
                            f"({_what_changed(was, cur)})")
    errors = restore(env, backup)
    backup.state = "undone" if not errors else "undo-incomplete"
    backup.errors.extend(f"undo: {e}" for e in errors)
    backup.save()
    return backup, errors


def _what_changed(was: dict, cur: dict) -> str:
    keys = [k for k in sorted(set(was) | set(cur)) if was.get(k) != cur.get(k)]
    names = {"sha256": "content", "exists": "existence", "uid": "owner", "gid": "group", "acl": "ACL",
             "xml_sha256": "definition"}
    return ", ".join(names.get(k, k) for k in keys) or "state"

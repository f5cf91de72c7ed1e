"""Fix plans and the engine that applies them.

A fix is a plan (data): a human summary, whether it is safe/unsafe/manual, and
a list of actions, each of which knows the exact command it stands for, what it
touches, how to show its diff, how to apply itself and how to undo itself from
a backup. `apply_plan` takes the lock, backs up everything the plan touches into
a timestamped directory, applies, re-runs the check, and restores the backup
when the re-check still fails. Checks build plans; only this module writes.
"""
from __future__ import annotations

import difflib
import errno
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from virtdoctor.facts.files import ACL_XATTR
from virtdoctor.model import Auto, ToolError
from virtdoctor.root import Root

DEFAULT_BACKUP_DIR = "/var/lib/virtdoctor/backups"
LOCK_PATH = "/run/virtdoctor-fix.lock"


class ActionError(Exception):
    pass


@dataclass
class Env:
    """Where and how actions apply: the root (fake roots in tests), the backup
    directory of this fix, a command runner and a read-write libvirt connection."""

    root: str = "/"
    backup_dir: str = ""
    run: Callable[[list[str]], subprocess.CompletedProcess] | None = None
    libvirt_open: Callable[[], Any] | None = None
    accounts: Any = None
    _conn: Any = None

    @property
    def fs(self) -> Root:
        return Root(self.root)

    def path(self, host_path: str, *, follow: bool = True) -> str:
        """The real path of a host path: below the root, symlinks resolved
        inside it (virtdoctor.root), so nothing outside --root is written."""
        return self.fs.real(host_path, follow=follow)

    def resolve(self, host_path: str) -> str:
        try:
            return self.fs.resolve(host_path)
        except Exception:  # a loop: the kernel reports it when the path is used
            return host_path

    def command(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        if self.run is not None:
            return self.run(argv)
        if self.root not in ("", "/"):
            raise ActionError(f"not running {argv[0]} on the live host for --root {self.root}")
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ActionError(f"{argv[0]}: not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise ActionError(f"{shlex.join(argv)} did not finish within {timeout:g} s") from exc
        if cp.returncode != 0:
            detail = (cp.stderr or cp.stdout).strip().splitlines()
            raise ActionError(f"{shlex.join(argv)} failed ({cp.returncode}): {detail[-1] if detail else ''}")
        return cp

    def conn(self):
        if self._conn is None:
            if self.libvirt_open is None:
                raise ActionError("no libvirt connection for this fix")
            self._conn = self.libvirt_open()
        return self._conn


# -- backups -------------------------------------------------------------------
def _meta(real: str) -> dict[str, Any]:
    st = os.lstat(real)
    meta: dict[str, Any] = {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}
    try:
        meta["acl"] = os.getxattr(real, ACL_XATTR, follow_symlinks=False).hex()
    except OSError:
        meta["acl"] = None
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
    real = env.path(host_path)
    entry: dict[str, Any] = {"path": host_path}
    if not os.path.lexists(real):
        entry["absent"] = True
    else:
        entry.update(_meta(real))
        if os.path.isfile(real) and not os.path.islink(real):
            copy = os.path.join(env.backup_dir, "files", host_path.lstrip("/"))
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copy2(real, copy)
            entry["copy"] = copy
    record.append(entry)


def restore_path(env: Env, entry: dict) -> None:
    real = env.path(entry["path"], follow=False)
    if entry.get("absent"):
        if os.path.isdir(real) and not os.path.islink(real):
            shutil.rmtree(real, ignore_errors=True)
        elif os.path.lexists(real):
            os.unlink(real)
        return
    if entry.get("copy"):
        with open(entry["copy"], "rb") as fh:
            _atomic_write(real, fh.read(), entry["mode"], entry["uid"], entry["gid"])
    if os.path.lexists(real):
        os.chmod(real, entry["mode"])
        os.chown(real, entry["uid"], entry["gid"], follow_symlinks=False)
        if entry.get("acl"):
            os.setxattr(real, ACL_XATTR, bytes.fromhex(entry["acl"]))
        else:
            try:
                os.removexattr(real, ACL_XATTR)
            except OSError:
                pass


def _atomic_write(real: str, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    directory = os.path.dirname(real) or "."
    fd, tmp = tempfile.mkstemp(prefix=".virtdoctor-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if uid is not None and gid is not None and os.geteuid() == 0:
            os.chown(tmp, uid, gid)
        os.replace(tmp, real)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- actions -------------------------------------------------------------------
class Action:
    """One step of a plan. Subclasses set `touches` (host paths backed up
    before apply and restored on rollback)."""

    touches: tuple[str, ...] = ()

    def command(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.command()

    def preview(self, env: Env) -> str:
        return ""

    def apply(self, env: Env) -> None:
        raise NotImplementedError

    def rollback(self, env: Env, backup: "Backup") -> None:
        """Undo beyond restoring `touches` (e.g. redefine a domain)."""


def _read_host(env: Env, host_path: str) -> str | None:
    try:
        with open(env.path(host_path), encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _udiff(path: str, old: str | None, new: str) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(True), new.splitlines(True),
                                        fromfile=f"a{path}" if old is not None else "/dev/null",
                                        tofile=f"b{path}"))


@dataclass
class WriteFile(Action):
    path: str
    content: str
    mode: int = 0o644

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"write {self.path} ({len(self.content.splitlines())} lines)"

    def preview(self, env: Env) -> str:
        return _udiff(self.path, _read_host(env, self.path), self.content)

    def apply(self, env: Env) -> None:
        real = env.path(self.path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        if os.path.exists(real):
            st = os.stat(real)
            _atomic_write(real, self.content.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
        else:
            _atomic_write(real, self.content.encode(), self.mode, None, None)


@dataclass
class SetConfKey(Action):
    """Change or add one key of a libvirt config file, keeping comments and order."""

    path: str
    key: str
    value: Any

    @property
    def touches(self):
        return (self.path,)

    def _new(self, env: Env) -> tuple[str | None, str]:
        from virtdoctor import confparse

        old = _read_host(env, self.path)
        return old, confparse.set_key(old or "", self.key, self.value, self.path)

    def command(self) -> str:
        from virtdoctor import confparse

        return f"set {self.key} = {confparse.render_value(self.value)} in {self.path}"

    def preview(self, env: Env) -> str:
        old, new = self._new(env)
        return _udiff(self.path, old, new)

    def apply(self, env: Env) -> None:
        old, new = self._new(env)
        WriteFile(self.path, new, 0o644).apply(env)


@dataclass
class MakeDir(Action):
    path: str
    mode: int = 0o700

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"mkdir -p -m {self.mode:04o} {self.path}"

    def apply(self, env: Env) -> None:
        real = env.path(self.path)
        os.makedirs(real, exist_ok=True)
        os.chmod(real, self.mode)


@dataclass
class SetMode(Action):
    path: str
    mode: int

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"chmod {self.mode:04o} {self.path}"

    def apply(self, env: Env) -> None:
        os.chmod(env.path(self.path), self.mode)


@dataclass
class SetGroup(Action):
    path: str
    group: str

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"chgrp {self.group} {self.path}"

    def apply(self, env: Env) -> None:
        grp = env.accounts.group(self.group) if env.accounts else None
        if grp is None:
            raise ActionError(f"group {self.group} does not exist")
        os.chown(env.path(self.path), -1, grp.gid)


@dataclass
class RemoveAcl(Action):
    path: str

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"setfacl -b {self.path}"

    def apply(self, env: Env) -> None:
        real = env.path(self.path)
        mode = os.stat(real).st_mode & 0o7777
        try:
            os.removexattr(real, ACL_XATTR)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
        os.chmod(real, mode)


@dataclass
class RunCommand(Action):
    """A command (start a daemon, load a module...). `wait_for` is a host path
    that must exist afterwards (a socket), polled for up to `wait_seconds`."""

    argv: list[str]
    summary: str = ""
    wait_for: str | None = None
    wait_seconds: float = 15.0
    undo: list[str] | None = None
    touches: tuple[str, ...] = ()  # files the command changes (backed up, restored on rollback)

    def command(self) -> str:
        return shlex.join(self.argv)

    def describe(self) -> str:
        return self.summary or self.command()

    def apply(self, env: Env) -> None:
        env.command(self.argv)
        if self.wait_for:
            deadline = time.monotonic() + self.wait_seconds
            while not os.path.exists(env.path(self.wait_for)):
                if time.monotonic() > deadline:
                    raise ActionError(f"{self.wait_for} did not appear within {self.wait_seconds:g} s "
                                      f"after {self.command()}")
                time.sleep(0.1)

    def rollback(self, env: Env, backup: "Backup") -> None:
        if self.undo:
            try:
                env.command(self.undo)
            except ActionError:
                pass


@dataclass
class DefineDomain(Action):
    """Redefine a domain through libvirt with validation (never by editing
    /etc/libvirt/qemu/*.xml). The old inactive XML is the backup."""

    name: str
    new_xml: str
    old_xml: str = ""

    def command(self) -> str:
        return f"virsh define --validate <edited XML of {self.name}>"

    def describe(self) -> str:
        return f"redefine domain {self.name} with the edited XML (validated by libvirt)"

    def preview(self, env: Env) -> str:
        return _udiff(f"/domain/{self.name}.xml", self.old_xml, self.new_xml)

    def apply(self, env: Env) -> None:
        import libvirt

        conn = env.conn()
        try:
            dom = conn.lookupByName(self.name)
            current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        except libvirt.libvirtError as exc:
            raise ActionError(f"cannot read domain {self.name}: {exc.get_error_message()}") from exc
        self.new_xml = self.rebuild(current)
        path = os.path.join(env.backup_dir, "domains", f"{self.name}.xml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(current)
        self._backup_file = path
        try:
            conn.defineXMLFlags(self.new_xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        except libvirt.libvirtError as exc:
            raise ActionError(f"libvirt refused the new XML: {exc.get_error_message()}") from exc

    def rebuild(self, current_xml: str) -> str:
        """The XML to define, given the domain's current inactive XML (with
        secrets). Plain DefineDomain defines `new_xml` as planned."""
        return self.new_xml

    def rollback(self, env: Env, backup: "Backup") -> None:
        path = getattr(self, "_backup_file", None)
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                env.conn().defineXML(fh.read())


@dataclass
class EditDomain(DefineDomain):
    """Redefine a domain with `edit` (a function changing a `domxml.Domain` in
    place) re-applied, when the fix is applied, to its current inactive XML
    *with secrets* (VIR_DOMAIN_XML_SECURE: graphics passwords, which the
    checks' read-only connection never sees). So the redefinition keeps them,
    and a second fix of the same domain keeps the first one's change.
    `new_xml` (the same edit on the XML the checks saw) is what the diff shows."""

    edit: Any = None

    def rebuild(self, current_xml: str) -> str:
        if self.edit is None:
            return self.new_xml
        from virtdoctor.domxml import parse_domain, serialise

        dom = parse_domain(current_xml, f"domain {self.name}", subject=f"domain:{self.name}")
        self.edit(dom)
        return serialise(dom.tree)


@dataclass
class StartNetwork(Action):
    name: str
    autostart: bool = True

    def command(self) -> str:
        cmd = f"virsh net-start {self.name}"
        return cmd + (f" && virsh net-autostart {self.name}" if self.autostart else "")

    def apply(self, env: Env) -> None:
        import libvirt

        net = env.conn().networkLookupByName(self.name)
        try:
            if not net.isActive():
                net.create()
            if self.autostart and net.isPersistent():
                net.setAutostart(1)
        except libvirt.libvirtError as exc:
            raise ActionError(exc.get_error_message()) from exc


# -- plans -------------------------------------------------------------------
@dataclass
class FixPlan:
    summary: str
    auto: Auto
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # restarts, "applies at next boot"...

    @property
    def commands(self) -> list[str]:
        return [a.command() for a in self.actions]

    def diff(self, env: Env) -> str:
        return "".join(a.preview(env) for a in self.actions)


def plan(summary: str, auto: Auto | str, *actions: Action, notes: list[str] | tuple[str, ...] = ()) -> FixPlan:
    return FixPlan(summary, Auto(auto), list(actions), list(notes))


def redefine_plan(dom, edit, *, auto: Auto | str = Auto.UNSAFE, summary: str | None = None,
                  notes: list[str] | tuple[str, ...] = ()) -> FixPlan | None:
    """The plan of an edit of a domain's XML. `edit(copy)` changes a copy of
    the `domxml.Domain` in place and may return the summary. A defined domain is
    redefined through libvirt (diff, backup, validation, re-check) with the edit
    re-applied to its XML with secrets (EditDomain); an XML file given to
    preflight is rewritten, never defined; stdin and transient domains get
    advice only. None when the edit changes nothing."""
    from virtdoctor.domxml import edit_copy, serialise

    tree, result = edit_copy(dom, edit)
    new = serialise(tree)
    if new == serialise(dom.tree):
        return None
    summary = summary or result or "Edit the domain XML"
    auto = Auto(auto)
    notes = list(notes)
    if dom.info is None:  # an XML file (preflight): the fix edits the file, never defines
        path = dom.extra.get("file") if isinstance(dom.extra, dict) else None
        if path:
            notes.append(f"then define it: virsh define --validate {path}")
            return plan(f"{summary} in {path}", auto, WriteFile(path, new), notes=notes)
        notes.append(f"{dom.source} is not a defined domain: apply the change to its XML before defining it")
        return plan(f"{summary} (edit the XML of {dom.source})", Auto.MANUAL, notes=notes)
    if not dom.info.persistent:
        notes.append("transient domain: redefining would make it persistent; change the XML it is created from")
        auto = Auto.MANUAL
    elif dom.info.active:
        notes.append(f"{dom.name} is running: the change applies at its next boot "
                     f"(virsh shutdown {dom.name}; virsh start {dom.name})")
    old = dom.info.xml if dom.info.xml.endswith("\n") else dom.info.xml + "\n"
    return plan(summary, auto, EditDomain(dom.name, new, old, edit=edit), notes=notes)


@dataclass
class Backup:
    directory: str
    files: list[dict] = field(default_factory=list)

    def save_manifest(self, extra: dict) -> None:
        with open(os.path.join(self.directory, "manifest.json"), "w", encoding="utf-8") as fh:
            json.dump({"files": self.files, **extra}, fh, indent=2)


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

    def to_dict(self) -> dict:
        return {"id": self.slug, "subject": self.subject, "summary": self.summary, "status": self.status,
                "applied": self.applied, "verified": self.verified, "backup": self.backup,
                "detail": self.detail, "commands": self.commands}


def new_backup_dir(base: str, slug: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = os.path.join(base, f"{stamp}-{slug}-{os.getpid()}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(base, f"{stamp}-{slug}-{os.getpid()}.{n}")
    os.makedirs(path, mode=0o700)
    return path


def apply_plan(fplan: FixPlan, env: Env, slug: str, subject: str, recheck: Callable[[], tuple[bool, str]],
               backup_base: str) -> Outcome:
    """Back up, apply, re-check, roll back on failure. `recheck` returns
    (passes, message) from a fresh run of the check on fresh facts."""
    env.backup_dir = new_backup_dir(backup_base, slug)
    backup = Backup(env.backup_dir)
    out = Outcome(slug, subject, fplan.summary, "failed", backup=env.backup_dir, commands=fplan.commands)
    done: list[Action] = []
    try:
        for action in fplan.actions:
            for p in action.touches:
                backup_path(env, p, backup.files)
            backup.save_manifest({"slug": slug, "subject": subject, "summary": fplan.summary})
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
            return out
        out.detail = f"re-check still fails: {message}"
    except Exception as exc:  # whatever an action raises, what was done is undone
        out.detail = f"{'failed' if isinstance(exc, ActionError) else type(exc).__name__}: {exc}"
        out.applied = bool(done)
    except BaseException:  # interrupted: put the host back, then stop
        _rollback(env, backup, done)
        raise
    _rollback(env, backup, done)
    out.status = "rolled-back" if out.applied or done else "failed"
    return out


def _rollback(env: Env, backup: Backup, done: list[Action]) -> None:
    for action in reversed(done):
        try:
            action.rollback(env, backup)
        except Exception:
            pass
    for entry in reversed(backup.files):
        try:
            restore_path(env, entry)
        except OSError:
            pass

"""Fix plans as data: a `FixPlan` (summary, auto, actions, notes) and every
action kind as a frozen dataclass: a kind, its arguments and the exact shell
equivalent (`command()`). Plans serialise to JSON and back (`to_dict` /
`from_dict`), so `fix --dry-run --format json` prints them and `fix --plan
FILE` applies a saved one. Nothing here touches the machine: the executors
live in the family modules (files, commands, libvirt, daemons) and run
through the engine."""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

from virtdoctor.model import Auto

ACTION_KINDS: dict[str, type] = {}


class ActionError(Exception):
    pass


def _kind(name: str):
    def reg(cls):
        cls.kind = name
        ACTION_KINDS[name] = cls
        return cls

    return reg


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return v


class Action:
    """One step of a plan: data only. `touches` are host paths the engine backs
    up before the step and restores on rollback or undo. The executor of each
    built-in kind lives in the remedy package (EXECUTORS); a third-party action
    may subclass Action and implement `apply(env)` itself."""

    kind: ClassVar[str] = ""
    touches: tuple[str, ...] = ()

    def command(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.command()

    # execution goes through the environment's executors (methods kept for plugins and callers)
    def preview(self, env) -> str:
        return env.preview(self)

    def apply(self, env) -> None:
        env.execute(self)

    def rollback(self, env, backup=None) -> None:
        """Undo beyond restoring `touches` (third-party actions); built-in kinds
        record what they changed in the backup manifest instead."""

    def to_dict(self) -> dict[str, Any]:
        if not dataclasses.is_dataclass(self) or not self.kind:
            raise TypeError(f"{type(self).__name__} is not a data action: it cannot be serialised")
        d: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            d[f.name] = _jsonable(getattr(self, f.name))
        d["command"] = self.command()
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Action":
        cls = ACTION_KINDS.get(d.get("kind", ""))
        if cls is None:
            raise ValueError(f"unknown action kind {d.get('kind')!r}")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        if cls is EditDomain and "ops" in kw:
            from virtdoctor.remedy.edits import EditOp

            kw["ops"] = tuple(EditOp.from_dict(o) for o in kw["ops"])
        return cls(**kw)


def _tuple(obj, name: str) -> None:
    v = getattr(obj, name)
    if v is not None and not isinstance(v, tuple):
        object.__setattr__(obj, name, tuple(v))


# -- files -----------------------------------------------------------------------
@_kind("write-file")
@dataclass(frozen=True)
class WriteFile(Action):
    path: str
    content: str
    mode: int = 0o644

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        """A short file that is not private prints as the exact shell command
        that writes it; anything longer (or a key) as a line naming it (the
        diff shows the content)."""
        lines = len(self.content.splitlines())
        if self.mode & 0o077 and 1 < lines <= 4 and len(self.content) <= 400:
            return f"printf %s {shlex.quote(self.content)} > {self.path}"
        return f"write {self.path} ({lines} lines)"


@_kind("set-conf-key")
@dataclass(frozen=True)
class SetConfKey(Action):
    """Change or add one key of a libvirt config file, keeping comments and order."""

    path: str
    key: str
    value: Any

    def __post_init__(self):
        if isinstance(self.value, tuple):
            object.__setattr__(self, "value", list(self.value))

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        from virtdoctor import confparse

        return f"set {self.key} = {confparse.render_value(self.value)} in {self.path}"


@_kind("mkdir")
@dataclass(frozen=True)
class MakeDir(Action):
    path: str
    mode: int = 0o700

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"mkdir -p -m {self.mode:04o} {self.path}"


@_kind("chmod")
@dataclass(frozen=True)
class SetMode(Action):
    path: str
    mode: int

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"chmod {self.mode:04o} {self.path}"


@_kind("chgrp")
@dataclass(frozen=True)
class SetGroup(Action):
    path: str
    group: str

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"chgrp {self.group} {self.path}"


@_kind("remove-acl")
@dataclass(frozen=True)
class RemoveAcl(Action):
    path: str

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"setfacl -b {self.path}"


@_kind("persist-module")
@dataclass(frozen=True)
class PersistModule(Action):
    """Add a kernel module to a modules-load.d file, keeping what is there. The
    line is decided when applied, so two fixes in one run both land."""

    path: str
    module: str

    @property
    def touches(self):
        return (self.path,)

    def command(self) -> str:
        return f"echo {self.module} >> {self.path}"

    def describe(self) -> str:
        return f"load {self.module} at boot ({self.path})"


# -- commands --------------------------------------------------------------------
@_kind("run")
@dataclass(frozen=True)
class RunCommand(Action):
    """A command (start a daemon, load a module...). `wait_for` is a host path
    that must exist afterwards (a socket), polled for up to `wait_seconds`;
    `undo` is the command that reverses it (run on rollback and undo)."""

    argv: list[str]
    summary: str = ""
    wait_for: str | None = None
    wait_seconds: float = 15.0
    undo: list[str] | None = None
    touches: tuple[str, ...] = ()  # files the command changes (backed up, restored on rollback)

    def __post_init__(self):
        # argv and undo stay lists (as checks and their tests write them); JSON gives lists back
        object.__setattr__(self, "argv", list(self.argv))
        if self.undo is not None:
            object.__setattr__(self, "undo", list(self.undo))
        _tuple(self, "touches")

    def command(self) -> str:
        return shlex.join(self.argv)

    def describe(self) -> str:
        return self.summary or self.command()


# -- daemons ---------------------------------------------------------------------
@_kind("restart-daemon")
@dataclass(frozen=True)
class RestartDaemon(Action):
    """Stop a daemon by its pids (SIGTERM, wait, SIGKILL) and start it again with
    `NAME -d`, then wait until its socket accepts a connection. When it was not
    running it is only started. The pids are the ones seen when planning,
    checked again by name."""

    name: str
    pids: tuple[int, ...] = ()
    socket: str = ""
    wait_seconds: float = 30.0
    # the command line it is configured to start with (facts.daemon: /etc/default, systemd
    # units...), without -d; empty: `NAME -d`
    args: tuple[str, ...] = ()

    def __post_init__(self):
        _tuple(self, "pids")
        _tuple(self, "args")

    @property
    def start_argv(self) -> list[str]:
        return [*self.args, "-d"] if self.args else [self.name, "-d"]

    def command(self) -> str:
        import shlex

        if self.pids:
            return f"kill {' '.join(map(str, self.pids))} && {shlex.join(self.start_argv)}"
        return shlex.join(self.start_argv)

    def describe(self) -> str:
        return (f"restart {self.name} (pid {', '.join(map(str, self.pids))}) so it reads the new configuration"
                if self.pids else f"start {self.name}")


# -- libvirt ---------------------------------------------------------------------
@_kind("define-domain")
@dataclass(frozen=True)
class DefineDomain(Action):
    """Redefine a domain through libvirt with validation (never by editing
    /etc/libvirt/qemu/*.xml). Its inactive XML with secrets is the backup."""

    name: str
    new_xml: str
    old_xml: str = ""

    def command(self) -> str:
        return f"virsh define --validate <edited XML of {self.name}>"

    def describe(self) -> str:
        return f"redefine domain {self.name} with the edited XML (validated by libvirt)"

    def preview(self, env=None) -> str:
        """The diff of the XML the checks saw against the edited XML (no I/O)."""
        import difflib

        return "".join(difflib.unified_diff(self.old_xml.splitlines(True), self.new_xml.splitlines(True),
                                            fromfile=f"a/domain/{self.name}.xml", tofile=f"b/domain/{self.name}.xml"))


@_kind("edit-domain")
@dataclass(frozen=True)
class EditDomain(DefineDomain):
    """Redefine a domain with an edit described as data: `ops` (set/remove
    attribute, set text, remove/insert element at a path), computed from
    `old_xml` (what the checks saw) and `new_xml` (the edited XML the diff
    shows) and re-applied at fix time to the domain's current inactive XML
    *with secrets* (graphics passwords survive; a second fix of the same domain
    keeps the first one's change). `edit` (a function, as older plugins pass)
    is not kept: the operations say the same as data."""

    ops: tuple = ()
    edit: InitVar[Any] = None

    def __post_init__(self, edit=None):
        if not self.ops and self.old_xml and self.new_xml:
            from virtdoctor.remedy.edits import diff_ops

            object.__setattr__(self, "ops", diff_ops(self.old_xml, self.new_xml))
        _tuple(self, "ops")


@_kind("start-network")
@dataclass(frozen=True)
class StartNetwork(Action):
    name: str
    autostart: bool = True

    def command(self) -> str:
        cmd = f"virsh net-start {self.name}"
        return cmd + (f" && virsh net-autostart {self.name}" if self.autostart else "")


@_kind("define-network")
@dataclass(frozen=True)
class DefineNetwork(Action):
    """Define a network from XML (the packaged default network). Rollback and
    undo undefine it again, when this action defined it."""

    name: str
    xml: str
    source: str

    def command(self) -> str:
        return f"virsh net-define {self.source}"

    def describe(self) -> str:
        return f"define network {self.name} from {self.source}"

    def preview(self, env=None) -> str:
        lines = "".join(f"+{line}\n" for line in self.xml.splitlines())
        return f"--- /dev/null\n+++ b/network/{self.name}.xml\n{lines}"


# -- plans -----------------------------------------------------------------------
@dataclass(frozen=True)
class FixPlan:
    summary: str
    auto: Auto
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()  # restarts, "applies at next boot"...

    def __post_init__(self):
        object.__setattr__(self, "auto", Auto(self.auto))
        _tuple(self, "actions")
        _tuple(self, "notes")

    @property
    def commands(self) -> list[str]:
        return [a.command() for a in self.actions]

    def diff(self, env) -> str:
        return "".join(a.preview(env) for a in self.actions)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "auto": self.auto.value, "notes": list(self.notes),
                "actions": [a.to_dict() for a in self.actions]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FixPlan":
        try:
            return cls(d["summary"], Auto(d["auto"]), tuple(Action.from_dict(a) for a in d.get("actions", ())),
                       tuple(d.get("notes", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a fix plan: {exc}") from None


def plan(summary: str, auto: Auto | str, *actions: Action, notes: list[str] | tuple[str, ...] = ()) -> FixPlan:
    return FixPlan(summary, Auto(auto), tuple(actions), tuple(notes))


def redefine_plan(dom, edit, *, auto: Auto | str = Auto.UNSAFE, summary: str | None = None,
                  notes: list[str] | tuple[str, ...] = ()) -> FixPlan | None:
    """The plan of an edit of a domain's XML. `edit(copy)` changes a copy of
    the `domxml.Domain` in place and may return the summary. A defined domain is
    redefined through libvirt (diff, backup, validation, re-check) with the edit,
    as operations, re-applied to its XML with secrets (EditDomain); an XML file
    given to preflight is rewritten, never defined; stdin and transient domains
    get advice only. None when the edit changes nothing."""
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
    return plan(summary, auto, EditDomain(dom.name, new, old), notes=notes)


__all__ = ["ACTION_KINDS", "Action", "ActionError", "DefineDomain", "DefineNetwork", "EditDomain", "FixPlan",
           "MakeDir", "PersistModule", "RemoveAcl", "RestartDaemon", "RunCommand", "SetConfKey", "SetGroup",
           "SetMode", "StartNetwork", "WriteFile", "field", "plan", "redefine_plan"]

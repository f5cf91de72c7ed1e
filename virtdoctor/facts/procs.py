"""Processes: psutil on the live host, the root's /proc tree otherwise."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    pid: int
    name: str
    cmdline: tuple[str, ...]
    uid: int | None = None


def stat_state(stat_text: str | None) -> str:
    """The state letter of a /proc/PID/stat line ('R', 'S', 'Z'...), '' when unknown.
    The comm field may hold spaces and parentheses: the state follows the last ')'."""
    if not stat_text or ")" not in stat_text:
        return ""
    rest = stat_text.rpartition(")")[2].split()
    return rest[0] if rest else ""


def is_zombie(stat_text: str | None) -> bool:
    """A process that exited and is not reaped yet (Z), or dead (X)."""
    return stat_state(stat_text) in ("Z", "X")


def read_processes(root: str) -> list[Proc]:
    if os.path.realpath(root) == "/":
        import psutil

        procs = []
        for p in psutil.process_iter(["pid", "name", "cmdline", "uids", "status"]):
            info = p.info
            if info.get("status") == psutil.STATUS_ZOMBIE:
                continue  # exited, not yet reaped: not running
            uids = info.get("uids")
            procs.append(Proc(info["pid"], info.get("name") or "", tuple(info.get("cmdline") or ()),
                              uids.real if uids else None))
        return procs
    return _read_procfs(os.path.join(root, "proc"))


def _read_procfs(procdir: str) -> list[Proc]:
    procs = []
    try:
        names = os.listdir(procdir)
    except OSError:
        return []
    for entry in names:
        if not entry.isdigit():
            continue
        base = os.path.join(procdir, entry)
        try:
            with open(os.path.join(base, "comm"), encoding="utf-8", errors="replace") as fh:
                name = fh.read().strip()
        except OSError:
            continue
        try:
            with open(os.path.join(base, "stat"), encoding="utf-8", errors="replace") as fh:
                if is_zombie(fh.read()):
                    continue  # a zombie
        except OSError:
            pass
        try:
            with open(os.path.join(base, "cmdline"), "rb") as fh:
                cmdline = tuple(a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a)
        except OSError:
            cmdline = ()
        procs.append(Proc(int(entry), name, cmdline))
    return procs

"""Helper-daemon facts: virtlogd and virtlockd, libvirt's hook scripts, lockd's lockspace.

`HostFacts.helperd` is a `HelperDaemons`:

- `daemon(name)`: for virtlogd / virtlockd, its socket (`/run/libvirt/NAME-sock`, or the
  pre-/run `/var/run/libvirt/NAME-sock`), whether a connect to it succeeds (live host
  only; a stale socket refuses), and the pids of processes with that command name;
- `hooks`: every file libvirt may run as a hook (`/etc/libvirt/hooks/{daemon,qemu,network,
  lxc,libxl}` and `<driver>.d/*`), with its mode, shebang and whether the interpreter
  exists; `syntax_error(hook)` runs `sh -n` / `bash -n` for shell scripts (never the hook);
- `lockd`: qemu.conf `lock_manager` and qemu-lockd.conf's lockspace directories.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import cached_property

from virtdoctor.model import FactUnavailable

QEMU_CONF = "/etc/libvirt/qemu.conf"
LOCKD_CONF = "/etc/libvirt/qemu-lockd.conf"
HOOK_DIR = "/etc/libvirt/hooks"
HOOK_DRIVERS = ("daemon", "qemu", "network", "lxc", "libxl")


@dataclass(frozen=True)
class HelperDaemon:
    name: str
    socket: str | None  # the socket path found (None: no socket file)
    accepts: bool | None  # a connect succeeded; None when not tried (not the live host)
    refused: str | None  # the connect error
    pids: tuple[int, ...]

    @property
    def running(self) -> bool:
        return bool(self.pids) and self.socket is not None and self.accepts is not False


@dataclass(frozen=True)
class Hook:
    path: str
    driver: str
    executable: bool
    regular: bool
    shebang: str | None  # the interpreter's path (first word after #!)
    interpreter_ok: bool | None  # None: no shebang (the kernel runs it as a binary)
    mtime: float


@dataclass(frozen=True)
class LockdConf:
    lock_manager: str | None  # qemu.conf lock_manager (None: no lock manager)
    file_lockspace_dir: str | None
    lvm_lockspace_dir: str | None
    scsi_lockspace_dir: str | None


class HelperDaemons:
    def __init__(self, facts):
        self.facts = facts
        self._daemons: dict[str, HelperDaemon] = {}

    def daemon(self, name: str) -> HelperDaemon:
        if name not in self._daemons:
            path = next((p for p in (f"/run/libvirt/{name}-sock", f"/var/run/libvirt/{name}-sock")
                         if self.facts.exists(p)), None)
            accepts = refused = None
            if path is not None and self.facts.is_live:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2.0)
                try:
                    s.connect(path)
                    accepts = True
                except OSError as exc:
                    accepts, refused = False, exc.strerror or str(exc)
                finally:
                    s.close()
            pids = tuple(sorted(p.pid for p in self.facts.process_named(name)))
            self._daemons[name] = HelperDaemon(name, path, accepts, refused, pids)
        return self._daemons[name]

    @cached_property
    def hooks(self) -> list[Hook]:
        out = []
        for drv in HOOK_DRIVERS:
            paths = [f"{HOOK_DIR}/{drv}"] + [f"{HOOK_DIR}/{drv}.d/{n}" for n in self.facts.listdir(f"{HOOK_DIR}/{drv}.d")]
            for path in paths:
                info = self.facts.stat(path)
                if info is None or info.is_dir:
                    continue
                shebang = None
                ok = None
                head = self.facts.read_bytes(path, limit=256) or b""
                if head.startswith(b"#!"):
                    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
                    shebang = words[0] if words else ""
                    ok = bool(shebang) and self.facts.which(shebang) is not None
                out.append(Hook(path, drv, bool(info.perms & 0o111), info.is_file, shebang, ok, info.mtime))
        return out

    def syntax_error(self, hook: Hook) -> str | None:
        """`sh -n` (or bash/dash -n) of a shell hook: its complaint, None when clean or
        not a shell script. Reads the script only; nothing of it runs."""
        shell = (hook.shebang or "").rsplit("/", 1)[-1]
        if shell not in ("sh", "bash", "dash"):
            return None
        res = self.facts.run([shell, "-n", self.facts.path(hook.path)], timeout=5)
        if res.returncode == 0:
            return None
        return (res.stderr or res.stdout).strip() or f"{shell} -n exited {res.returncode}"

    @cached_property
    def lockd(self) -> LockdConf:
        try:
            self.facts.conf(QEMU_CONF)
        except FactUnavailable:
            raise
        except Exception as exc:
            raise FactUnavailable(f"{QEMU_CONF} does not parse ({exc})") from exc
        mgr = self.facts.conf_value(QEMU_CONF, "lock_manager")
        get = lambda k: self.facts.conf_value(LOCKD_CONF, k)  # noqa: E731
        return LockdConf(str(mgr) if mgr else None, get("file_lockspace_dir"), get("lvm_lockspace_dir"),
                         get("scsi_lockspace_dir"))

    def stdio_handler(self) -> str:
        return str(self.facts.conf_value(QEMU_CONF, "stdio_handler", "logd"))


__all__ = ["HelperDaemons", "HelperDaemon", "Hook", "LockdConf"]

"""Where and how actions apply: the run's Root, the backup of the fix in
progress, a command runner and a read-write libvirt connection. Actions reach
their executors through `Env.execute` (virtdoctor.remedy.executors)."""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

from virtdoctor.remedy.plan import ActionError
from virtdoctor.root import Root


@dataclass
class Env:
    """Where and how actions apply: the root (fake roots in tests), the backup
    of this fix, a command runner and a read-write libvirt connection."""

    root: str = "/"
    backup_dir: str = ""
    run: Callable[[list[str]], Any] | None = None
    libvirt_open: Callable[[], Any] | None = None
    accounts: Any = None
    _conn: Any = None
    backup: Any = None  # engine.Backup of the fix being applied

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

    def command(self, argv, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = list(argv)
        if self.run is not None:
            return self.run(argv)
        if not self.fs.is_live:
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

    def record(self, change: dict) -> None:
        """Note what an action changed beyond files (domain, network, command)."""
        if self.backup is not None:
            self.backup.changes.append(change)
            self.backup.save()

    def execute(self, action) -> None:
        from virtdoctor.remedy.executors import execute

        execute(action, self)

    def preview(self, action) -> str:
        from virtdoctor.remedy.executors import preview

        return preview(action, self)

"""One `Root`: where host paths live for this run.

Every host path ("/etc/libvirt/qemu.conf", "/var/log/libvirt") is resolved
below `--root` by the same object, for the facts that read and for the remedy
engine that writes (backups and its lock file included). Symlinks are followed
inside the root: an absolute link target is re-rooted (in a mounted image,
`/var/log -> /srv/log` means the image's /srv/log, never this machine's) and
`..` never climbs above the root. So `fix --root DIR` reads and writes nothing
outside DIR. On the live root (`/`) paths are what they say and the kernel
resolves links itself.
"""
from __future__ import annotations

import os
import posixpath

from virtdoctor.model import FactUnavailable

MAX_LINKS = 40  # the kernel's own limit (ELOOP)


class Root:
    __slots__ = ("base", "is_live")

    def __init__(self, base: str | os.PathLike = "/"):
        base = os.fspath(base) or "/"
        self.base = base
        self.is_live = base == "/" or os.path.realpath(base) == "/"

    def __repr__(self) -> str:
        return f"Root({self.base!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Root) and other.base == self.base

    def __hash__(self) -> int:
        return hash(self.base)

    # -- host path -> real path ---------------------------------------------
    def join(self, host_path: str) -> str:
        """The real path of a host path below the root, links not resolved
        (".." never climbs out: paths come from domain XML, configs...)."""
        if not host_path.startswith("/"):
            raise ValueError(f"host paths are absolute: {host_path!r}")
        if self.base in ("", "/"):
            return host_path
        return os.path.join(self.base, posixpath.normpath(host_path).lstrip("/"))

    def real(self, host_path: str, *, follow: bool = True) -> str:
        """Like `join`, with symlinks inside the root resolved below the root;
        with follow=False the last component stays unresolved (lstat, unlink,
        rename over a link). A symlink loop is left for the kernel to report
        (ELOOP) when the path is used."""
        if self.base in ("", "/"):
            return host_path
        norm = posixpath.normpath(host_path)
        try:
            if follow:
                norm = self.resolve(norm)
            else:
                head, tail = posixpath.split(norm)
                norm = posixpath.join(self.resolve(head), tail) if tail else self.resolve(head)
        except FactUnavailable:
            pass
        return self.join(norm)

    def resolve(self, host_path: str, depth: int = 0) -> str:
        """The host path with every symlink resolved inside the root (absolute
        targets re-rooted, ".." stopping at the root). FactUnavailable on a
        loop."""
        if depth > MAX_LINKS:
            raise FactUnavailable(f"too many levels of symbolic links at {host_path}")
        if self.base in ("", "/"):
            return os.path.realpath(host_path)
        parts = [p for p in host_path.split("/") if p]
        resolved = "/"
        for i, part in enumerate(parts):
            candidate = posixpath.normpath(posixpath.join(resolved, part))  # ".." stops at "/"
            real = self.join(candidate)
            if os.path.islink(real):
                target = os.readlink(real)
                base = target if target.startswith("/") else posixpath.join(resolved, target)
                rest = "/".join(parts[i + 1:])
                joined = posixpath.normpath("/" + (posixpath.join(base, rest) if rest else base))
                return self.resolve(joined, depth + 1)
            resolved = candidate
        return resolved

    def host_path(self, real_path: str) -> str:
        """The host path of a real path below the root."""
        if self.base in ("", "/"):
            return real_path
        rel = os.path.relpath(real_path, self.base)
        return "/" + ("" if rel == "." else rel)

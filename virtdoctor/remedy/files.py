"""Executors of the file actions: write a file, set a config key, mkdir,
chmod, chgrp, remove a POSIX ACL, persist a kernel module. Paths resolve
below the root through `env.path` (virtdoctor.root); files are written
atomically (temp file, fsync, rename) keeping their mode and owner."""
from __future__ import annotations

import difflib
import errno
import os

import tempfile

from virtdoctor.facts.files import ACL_XATTR
from virtdoctor.remedy.plan import (ActionError, MakeDir, PersistModule, RemoveAcl, SetConfKey, SetGroup, SetMode,
                                    WriteFile)


def atomic_write(real: str, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
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


def read_host(env, host_path: str) -> str | None:
    try:
        with open(env.path(host_path), encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def udiff(path: str, old: str | None, new: str) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(True), new.splitlines(True),
                                        fromfile=f"a{path}" if old is not None else "/dev/null",
                                        tofile=f"b{path}"))


def write(env, host_path: str, content: str, mode: int) -> None:
    real = env.path(host_path)
    os.makedirs(os.path.dirname(real), exist_ok=True)
    if os.path.exists(real):
        st = os.stat(real)
        atomic_write(real, content.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
    else:
        atomic_write(real, content.encode(), mode, None, None)


def _write_preview(a: WriteFile, env) -> str:
    return udiff(a.path, read_host(env, a.path), a.content)


def _write(a: WriteFile, env) -> None:
    write(env, a.path, a.content, a.mode)


def _conf_new(a: SetConfKey, env) -> tuple[str | None, str]:
    from virtdoctor import confparse

    old = read_host(env, a.path)
    return old, confparse.set_key(old or "", a.key, a.value, a.path)


def _conf_preview(a: SetConfKey, env) -> str:
    old, new = _conf_new(a, env)
    return udiff(a.path, old, new)


def _set_conf_key(a: SetConfKey, env) -> None:
    _old, new = _conf_new(a, env)
    write(env, a.path, new, 0o644)


def _mkdir(a: MakeDir, env) -> None:
    real = env.path(a.path)
    os.makedirs(real, exist_ok=True)
    os.chmod(real, a.mode)


def _chmod(a: SetMode, env) -> None:
    os.chmod(env.path(a.path), a.mode)


def _chgrp(a: SetGroup, env) -> None:
    grp = env.accounts.group(a.group) if env.accounts else None
    if grp is None:
        raise ActionError(f"group {a.group} does not exist")
    os.chown(env.path(a.path), -1, grp.gid)


def _remove_acl(a: RemoveAcl, env) -> None:
    real = env.path(a.path)
    mode = os.stat(real).st_mode & 0o7777
    try:
        os.removexattr(real, ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
    os.chmod(real, mode)


def _module_new(a: PersistModule, env) -> tuple[str | None, str]:
    old = read_host(env, a.path)
    lines = (old or "").splitlines()
    if a.module in (line.split("#", 1)[0].strip() for line in lines):
        return old, old or ""
    if old is None:
        lines = ["# kernel modules virtdoctor found missing (loaded at boot by systemd-modules-load)"]
    return old, "\n".join(lines + [a.module]) + "\n"


def _module_preview(a: PersistModule, env) -> str:
    old, new = _module_new(a, env)
    return udiff(a.path, old, new) if new != (old or "") else ""


def _persist_module(a: PersistModule, env) -> None:
    old, new = _module_new(a, env)
    if new != (old or ""):
        write(env, a.path, new, 0o644)

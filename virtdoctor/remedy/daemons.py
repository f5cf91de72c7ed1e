"""Executor of RestartDaemon: stop the daemon by the pids seen when planning
(checked again by name in /proc: never another process that took the pid),
start it with `NAME -d`, wait until its socket answers. Only on the live host."""
from __future__ import annotations

import os
import signal
import socket
import time

from virtdoctor.remedy.plan import ActionError, RestartDaemon


def _alive(env, name: str, pid: int) -> bool:
    try:
        with open(env.path(f"/proc/{pid}/stat"), encoding="utf-8", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return False
    comm = data[data.index("(") + 1:data.rindex(")")]
    state = data[data.rindex(")") + 2:][:1]
    return comm == name[:15] and state not in ("Z", "X")


def _stop(a: RestartDaemon, env) -> None:
    mine = [p for p in a.pids if _alive(env, a.name, p)]
    for pid in mine:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_alive(env, a.name, p) for p in mine):
        if time.monotonic() > deadline:
            for pid in mine:
                if _alive(env, a.name, pid):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            if any(_alive(env, a.name, p) for p in mine):
                raise ActionError(f"{a.name} (pid {mine}) does not exit")
            break
        time.sleep(0.05)


def answers(env, host_path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(env.path(host_path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _restart(a: RestartDaemon, env) -> None:
    if a.pids and not env.fs.is_live:
        raise ActionError(f"not stopping processes of the live host for --root {env.root}")
    _stop(a, env)
    env.command(a.start_argv)
    if a.socket:
        deadline = time.monotonic() + a.wait_seconds
        while not answers(env, a.socket):
            if time.monotonic() > deadline:
                raise ActionError(f"{a.name} started but {a.socket} did not answer within "
                                  f"{a.wait_seconds:g} s (see /var/log/libvirt/{a.name}.log)")
            time.sleep(0.1)

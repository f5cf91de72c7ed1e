"""Executor of RunCommand: run it (never on the live host for another
--root), wait for the path it should create, record its undo command."""
from __future__ import annotations

import os
import time

from virtdoctor.remedy.plan import ActionError, RunCommand


def _run(a: RunCommand, env) -> None:
    env.command(a.argv)
    if a.undo:
        env.record({"kind": "command", "name": a.command(), "undo": list(a.undo)})
    if a.wait_for:
        deadline = time.monotonic() + a.wait_seconds
        while not os.path.exists(env.path(a.wait_for)):
            if time.monotonic() > deadline:
                raise ActionError(f"{a.wait_for} did not appear within {a.wait_seconds:g} s after {a.command()}")
            time.sleep(0.1)


def undo_command(env, change: dict) -> None:
    env.command(change["undo"])

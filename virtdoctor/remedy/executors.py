"""Which executor runs which action kind (one table, the families' functions),
and how a recorded change is undone or compared (rollback and `fix --undo`)."""
from __future__ import annotations

from virtdoctor.remedy import commands, daemons, files, libvirt
from virtdoctor.remedy.plan import (ActionError, DefineDomain, DefineNetwork, EditDomain, MakeDir, PersistModule,
                                    RemoveAcl, RestartDaemon, RunCommand, SetConfKey, SetGroup, SetMode, StartNetwork,
                                    WriteFile)

# kind -> (apply(action, env), preview(action, env) | None)
EXECUTORS = {
    WriteFile: (files._write, files._write_preview),
    SetConfKey: (files._set_conf_key, files._conf_preview),
    MakeDir: (files._mkdir, None),
    SetMode: (files._chmod, None),
    SetGroup: (files._chgrp, None),
    RemoveAcl: (files._remove_acl, None),
    PersistModule: (files._persist_module, files._module_preview),
    RunCommand: (commands._run, None),
    RestartDaemon: (daemons._restart, None),
    DefineDomain: (libvirt._define, None),  # their diff needs no I/O: DefineDomain.preview
    EditDomain: (libvirt._define, None),
    StartNetwork: (libvirt._start_network, None),
    DefineNetwork: (libvirt._define_network, None),
}


def execute(action, env) -> None:
    entry = EXECUTORS.get(type(action))
    if entry is None:
        raise ActionError(f"no executor for {type(action).__name__}")
    entry[0](action, env)


def preview(action, env) -> str:
    entry = EXECUTORS.get(type(action))
    return entry[1](action, env) if entry and entry[1] else ""


def undo_change(env, change: dict) -> None:
    """Reverse one recorded change (rollback and undo)."""
    kind = change.get("kind")
    if kind == "command":
        commands.undo_command(env, change)
    elif kind == "domain":
        libvirt.undo_domain(env, change)
    elif kind == "network":
        libvirt.undo_network(env, change)
    else:
        raise ActionError(f"unknown change {kind!r} in the manifest")


def change_state(env, change: dict) -> dict:
    """The current state of what a recorded change touched (compared by undo)."""
    kind = change.get("kind")
    if kind == "domain":
        return libvirt.domain_state(env, change)
    if kind == "network":
        return libvirt.network_state(env, change)
    return {"kind": kind, "name": change.get("name", "")}

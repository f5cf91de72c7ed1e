"""Fix plans (data) and the remedy engine that applies them.

- `plan`: FixPlan and every action kind as frozen dataclasses, JSON both ways;
  `redefine_plan` for domain-XML edits (`edits`: the edit as operations).
- executors by family: `files`, `commands`, `libvirt`, `daemons`; `executors`
  maps each kind to its executor; `env.Env` is where they apply.
- `engine`: lock, backup and manifest, apply, re-check, rollback, undo.

Checks build plans (through virtdoctor.api); only this package writes, and
only through the run's Root."""
from __future__ import annotations

from virtdoctor.remedy.plan import (ACTION_KINDS, Action, ActionError, DefineDomain, DefineNetwork, EditDomain,
                                    FixPlan, MakeDir, PersistModule, RemoveAcl, RestartDaemon, RunCommand,
                                    SetConfKey, SetGroup, SetMode, StartNetwork, WriteFile, plan, redefine_plan)

_ENGINE = {"DEFAULT_BACKUP_DIR", "EXECUTORS", "LOCK_PATH", "Backup", "Env", "FixLock", "Outcome", "apply_plan",
           "atomic_write", "backup_path", "change_state", "list_backups", "new_backup_dir", "restore_path",
           "rollback", "undo", "undo_change"}


def __getattr__(name: str):
    """The engine loads when first used: a check run builds plans, it applies none."""
    if name in _ENGINE or name == "_atomic_write":
        from virtdoctor.remedy import engine

        return getattr(engine, "atomic_write" if name == "_atomic_write" else name)
    raise AttributeError(f"module 'virtdoctor.remedy' has no attribute {name!r}")


__all__ = ["ACTION_KINDS", "Action", "ActionError", "Backup", "DEFAULT_BACKUP_DIR", "DefineDomain", "DefineNetwork",
           "EXECUTORS", "EditDomain", "Env", "FixLock", "FixPlan", "LOCK_PATH", "MakeDir", "Outcome",
           "PersistModule", "RemoveAcl", "RestartDaemon", "RunCommand", "SetConfKey", "SetGroup", "SetMode",
           "StartNetwork", "WriteFile", "apply_plan", "backup_path", "change_state", "list_backups",
           "new_backup_dir", "plan", "redefine_plan", "restore_path", "rollback", "undo", "undo_change"]

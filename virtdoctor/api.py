"""Everything a check module imports: built-in checks use only this module,
exactly as third-party plugins do, so they cannot lean on internals."""
from virtdoctor.checkdef import Check, check
from virtdoctor.hookspecs import hookimpl
from virtdoctor.model import (Auto, FactUnavailable, Fail, Finding, FixInfo, Pass, Result, Severity, Skip,
                              Status, Warn)
from virtdoctor.remedy import (Action, ActionError, DefineDomain, EditDomain, FixPlan, MakeDir, RemoveAcl, RunCommand, SetConfKey,
                               SetGroup, SetMode, StartNetwork, WriteFile, plan, redefine_plan)

__all__ = [
    "Action", "ActionError", "Auto", "EditDomain", "Check", "DefineDomain", "FactUnavailable", "Fail", "Finding", "FixInfo", "FixPlan",
    "MakeDir", "Pass", "RemoveAcl", "Result", "RunCommand", "SetConfKey", "SetGroup", "SetMode", "Severity",
    "Skip", "StartNetwork", "Status", "Warn", "WriteFile", "check", "hookimpl", "plan", "redefine_plan",
]

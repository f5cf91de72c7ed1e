"""Everything a check module imports: built-in checks use only this module
(plus pure standard-library modules), exactly as third-party plugins do, so
they cannot lean on internals. tests/unit/test_shape.py enforces it.

What is here, by layer:
- declaring checks and their results: `check`, `hookimpl`, Pass/Fail/Warn/Skip...
- fix plans: `plan`, `redefine_plan` and the action types;
- reading and editing domain XML (no lxml import in a check): `Domain`, `Disk`,
  `append_child`, `insert_before`, `remove_element`, `element`, `fragment`...;
- facts types (`FileInfo`, `Proc`, `QemuAccount`...) and pure helpers of the
  facts layer (`parse_uri`, `devnum`); the facts-layer modules whose functions
  take `facts` (`tlsfacts`, `fwfacts`, `osinfo`, `platformfacts`, `schemafacts`).
"""
from virtdoctor.checkdef import Check, check
from virtdoctor.domxml import (BUS_PREFIX, PREFIX_BUSES, Disk, Domain, DomainXMLError, append_child,
                               disk_index_name, disk_name_index, disk_name_prefix, edit_copy, element,
                               element_path, ensure_child, enum_values, fragment, insert_before, is_q35,
                               libvirt_disk_order, parse_xml_document, remove_element, serialise)
from virtdoctor.facts import Account, Cmd, FileInfo, Group, KvmProbe, Link, Proc, QemuAccount
from virtdoctor.facts import firmware as fwfacts
from virtdoctor.facts import cpu as cpufacts
from virtdoctor.facts import lsm as lsmfacts
from virtdoctor.facts import memory as memfacts
from virtdoctor.facts import osinfo
from virtdoctor.facts import platform as platformfacts
from virtdoctor.facts import schema as schemafacts
from virtdoctor.facts import tls as tlsfacts
from virtdoctor.facts.platform import devnum
from virtdoctor.facts.uri import ParsedUri, parse_uri
from virtdoctor.hookspecs import hookimpl
from virtdoctor.model import (Auto, FactUnavailable, Fail, Finding, FixInfo, Pass, Result, Severity, Skip,
                              Status, Warn, planner, with_plan)
from virtdoctor.checktools import each_domain, is_session
from virtdoctor.remedy.plan import (Action, ActionError, DefineDomain, DefineNetwork, EditDomain, FixPlan, MakeDir,
                                    PersistModule, RemoveAcl, RestartDaemon, RunCommand, SetConfKey, SetGroup, SetMode,
                                    StartNetwork, WriteFile, plan, redefine_plan)

__all__ = [
    "Action", "ActionError", "Auto", "EditDomain", "Check", "DefineDomain", "FactUnavailable", "Fail", "Finding", "FixInfo", "FixPlan",
    "MakeDir", "Pass", "RemoveAcl", "Result", "RunCommand", "SetConfKey", "SetGroup", "SetMode", "Severity",
    "Skip", "StartNetwork", "Status", "Warn", "WriteFile", "check", "hookimpl", "plan", "planner", "redefine_plan",
    "with_plan", "DefineNetwork", "PersistModule", "RestartDaemon", "each_domain", "is_session",
    # domain XML
    "BUS_PREFIX", "PREFIX_BUSES", "Disk", "Domain", "DomainXMLError", "append_child", "disk_index_name",
    "disk_name_index", "disk_name_prefix", "edit_copy", "element", "element_path", "ensure_child", "enum_values",
    "fragment", "insert_before", "is_q35", "libvirt_disk_order", "parse_xml_document", "remove_element", "serialise",
    # facts
    "Account", "Cmd", "FileInfo", "Group", "KvmProbe", "Link", "Proc", "QemuAccount", "ParsedUri", "devnum",
    "parse_uri", "fwfacts", "cpufacts", "lsmfacts", "memfacts", "osinfo", "platformfacts", "schemafacts", "tlsfacts",
]

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtdoctor developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: virtdoctor_fix
short_description: Repair a libvirt/KVM host with virtdoctor's fix plans
version_added: "0.1.0"
description:
  - Runs the installed C(virtdoctor fix --format json) on the managed host.
  - Under check mode it only plans (C(fix --dry-run)) and reports C(changed) when anything is planned;
    with C(--diff) it shows each plan's real diff of the files and domain definitions it would change.
  - Otherwise it applies the safe plans (C(fix --yes)): each under virtdoctor's lock, with a backup,
    a re-check and a roll-back when the re-check still fails. C(changed) when anything was fixed;
    the task fails when any fix failed or was rolled back. A second run changes nothing.
author:
  - virtdoctor developers
options:
  executable:
    description: Path of the virtdoctor executable (default V(virtdoctor) on E(PATH), then C(/opt/virtdoctor/bin)).
    type: str
  connect:
    description: libvirt URI (C(--connect)).
    type: str
  root:
    description: Work on the files below this directory instead of C(/) (C(--root)).
    type: path
  only:
    description: Fix only these checks (slugs).
    type: list
    elements: str
    default: []
  skip:
    description: Leave these checks alone (slugs).
    type: list
    elements: str
    default: []
  domain:
    description: Look at these defined domains only.
    type: list
    elements: str
    default: []
  unsafe:
    description: Also apply fixes that change guest-visible configuration (C(--unsafe)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: What would be fixed (run with --check --diff)
  virtdoctor.virtdoctor.virtdoctor_fix:

- name: Fix the KVM device permissions only
  virtdoctor.virtdoctor.virtdoctor_fix:
    only: [kvm-device-permission]

- name: Also guest-visible fixes (domain definitions)
  virtdoctor.virtdoctor.virtdoctor_fix:
    unsafe: true
"""

RETURN = r"""
actions:
  description:
    - One entry per failing check that has a plan, as in C(virtdoctor fix --format json)
      (id, subject, summary, auto, commands, diff, status, detail, backup).
    - status is V(planned) (check mode), V(fixed), V(failed), V(rolled-back) or V(skipped) (manual advice,
      unsafe without O(unsafe), or fixed meanwhile).
  returned: always
  type: list
  elements: dict
fixed:
  description: C(id subject) of what was fixed.
  returned: always
  type: list
  elements: str
planned:
  description: C(id subject) of what would be fixed (check mode).
  returned: always
  type: list
  elements: str
rc:
  description: virtdoctor's exit status.
  returned: always
  type: int
findings:
  description: The findings before fixing.
  returned: always
  type: list
  elements: dict
summary:
  description: Findings per status, before fixing.
  returned: always
  type: dict
version:
  description: virtdoctor's version on the managed host.
  returned: always
  type: str
target:
  description: What was checked.
  returned: always
  type: dict
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtdoctor.virtdoctor.plugins.module_utils.virtdoctor import (
    COMMON_ARGS, build_argv, common_result, run_json)


def split_diff(text):
    """One Ansible diff per file of a unified diff (a plan may touch several)."""
    out, cur = [], []
    for line in (text or "").splitlines(True):
        if line.startswith("--- ") and cur and any(x.startswith("@@") for x in cur):
            out.append("".join(cur))
            cur = []
        cur.append(line)
    if cur:
        out.append("".join(cur))
    return out


def header(chunk, default):
    m = re.search(r"^\+\+\+ (\S+)", chunk, re.M)
    return m.group(1) if m else default


def main():
    spec = dict(COMMON_ARGS, unsafe=dict(type="bool", default=False))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    extra = ["--dry-run"] if module.check_mode else ["--yes"]
    if module.params["unsafe"]:
        extra.append("--unsafe")
    argv = build_argv(module, "fix", extra)
    rc, doc = run_json(module, argv)
    actions = doc.get("actions", [])
    planned = ["%s %s" % (a["id"], a["subject"]) for a in actions if a.get("status") == "planned"]
    fixed = ["%s %s" % (a["id"], a["subject"]) for a in actions if a.get("status") == "fixed"]
    bad = [a for a in actions if a.get("status") in ("failed", "rolled-back")]
    result = dict(common_result(rc, doc), cmd=argv, actions=actions, planned=planned, fixed=fixed,
                  changed=bool(planned) if module.check_mode else bool(fixed))
    if module._diff:
        diffs = []
        for a in actions:
            if a.get("status") not in ("planned", "fixed"):
                continue
            if not a.get("diff"):  # nothing file-shaped (a mode, a daemon): the plan itself
                text = "# %s %s: %s\n" % (a["id"], a["subject"], a.get("summary", ""))
                text += "".join("$ %s\n" % c for c in a.get("commands") or ())
                diffs.append(dict(prepared=text))
                continue
            for chunk in split_diff(a["diff"]):
                name = header(chunk, a["subject"])
                diffs.append(dict(before_header="%s (%s)" % (name, a["id"]), after_header=name, prepared=chunk))
        result["diff"] = diffs
    if bad:
        module.fail_json(msg="virtdoctor fix: %s" % "; ".join(
            "%s %s %s: %s" % (a["id"], a["subject"], a["status"], a.get("detail", "")) for a in bad), **result)
    # a non-zero rc alone would make Ansible call the task failed: the verdict is ours
    module.exit_json(failed=False, **result)


if __name__ == "__main__":
    main()

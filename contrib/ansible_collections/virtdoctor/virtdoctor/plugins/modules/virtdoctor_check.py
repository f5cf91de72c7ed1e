#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtdoctor developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: virtdoctor_check
short_description: Check a libvirt/KVM host with virtdoctor
version_added: "0.1.0"
description:
  - Runs the installed C(virtdoctor check --format json) on the managed host and returns its findings.
  - Read-only; it runs the same under check mode.
  - Fails the task when virtdoctor itself cannot run (exit status 3) or prints no JSON document,
    with virtdoctor's own one-line message, and, depending on O(fail_on), when checks fail.
author:
  - virtdoctor developers
options:
  executable:
    description:
      - Path of the virtdoctor executable. Default is V(virtdoctor) on E(PATH), then C(/opt/virtdoctor/bin)
        (where the P(virtdoctor.virtdoctor.install#role) role puts it).
    type: str
  connect:
    description: libvirt URI (C(--connect)); default is virtdoctor's (V(qemu:///system) as root).
    type: str
  root:
    description: Read host files below this directory instead of C(/) (C(--root)).
    type: path
  only:
    description: Run only these checks (slugs).
    type: list
    elements: str
    default: []
  skip:
    description: Do not run these checks (slugs).
    type: list
    elements: str
    default: []
  domain:
    description: Look at these defined domains only; host checks still run.
    type: list
    elements: str
    default: []
  fail_on:
    description:
      - When the task fails. V(error) when a check of severity error fails (exit status 2),
        V(warning) when any check fails (exit status 1 or 2), V(never) only when virtdoctor cannot run.
    type: str
    choices: [never, warning, error]
    default: error
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Needs virtdoctor installed on the managed host (see the P(virtdoctor.virtdoctor.install#role) role).
"""

EXAMPLES = r"""
- name: Check every hypervisor, fail only on errors
  virtdoctor.virtdoctor.virtdoctor_check:
  register: vd

- name: Only the KVM checks, never fail the play
  virtdoctor.virtdoctor.virtdoctor_check:
    only: [kvm-device-missing, kvm-device-permission]
    fail_on: never

- name: Look at a mounted image's /etc
  virtdoctor.virtdoctor.virtdoctor_check:
    root: /mnt/image
"""

RETURN = r"""
rc:
  description: virtdoctor's exit status (0 ok, 1 warnings, 2 errors).
  returned: always
  type: int
  sample: 2
findings:
  description: Every finding, as in virtdoctor's JSON document (id, status, severity, subject, title, message, evidence, fix).
  returned: always
  type: list
  elements: dict
summary:
  description: Findings per status.
  returned: always
  type: dict
  sample: {"pass": 58, "fail": 5, "skip": 2, "error": 0}
failing:
  description: Slugs of the checks that failed.
  returned: always
  type: list
  elements: str
  sample: [kvm-device-permission]
version:
  description: virtdoctor's version on the managed host.
  returned: always
  type: str
  sample: 0.1.0
target:
  description: What was checked (host name, root, libvirt URI).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtdoctor.virtdoctor.plugins.module_utils.virtdoctor import (
    COMMON_ARGS, build_argv, common_result, run_json)

THRESHOLD = {"never": None, "warning": 1, "error": 2}


def main():
    spec = dict(COMMON_ARGS, fail_on=dict(type="str", choices=["never", "warning", "error"], default="error"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    argv = build_argv(module, "check")
    rc, doc = run_json(module, argv)
    result = dict(changed=False, cmd=argv, **common_result(rc, doc))
    threshold = THRESHOLD[module.params["fail_on"]]
    if threshold is not None and rc >= threshold:
        bad = [f for f in result["findings"] if f.get("status") == "fail"
               and (threshold == 1 or f.get("severity") == "error")]
        module.fail_json(msg="virtdoctor: %d failing: %s" % (len(bad), ", ".join(sorted(set(f["id"] for f in bad)))),
                         **result)
    # a non-zero rc alone would make Ansible call the task failed: the verdict is ours
    module.exit_json(failed=False, **result)


if __name__ == "__main__":
    main()

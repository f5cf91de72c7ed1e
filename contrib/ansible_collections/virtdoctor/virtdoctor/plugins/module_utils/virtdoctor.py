# -*- coding: utf-8 -*-
# Copyright: virtdoctor developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)
"""Running the installed virtdoctor CLI from a module: argv list, LC_ALL=C.UTF-8, JSON out."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

EXIT_TOOL = 3

COMMON_ARGS = dict(
    executable=dict(type="str"),
    connect=dict(type="str"),
    root=dict(type="path"),
    only=dict(type="list", elements="str", default=[]),
    skip=dict(type="list", elements="str", default=[]),
    domain=dict(type="list", elements="str", default=[]),
)


def find_executable(module):
    exe = module.params.get("executable")
    if exe:
        return exe
    return module.get_bin_path("virtdoctor", required=True, opt_dirs=["/opt/virtdoctor/bin", "/usr/local/bin"])


def build_argv(module, command, extra=()):
    p = module.params
    argv = [find_executable(module)]
    if p.get("connect"):
        argv += ["--connect", p["connect"]]
    if p.get("root"):
        argv += ["--root", p["root"]]
    argv += ["--format", "json", command]
    if p.get("only"):
        argv.append("--only=" + ",".join(p["only"]))
    if p.get("skip"):
        argv.append("--skip=" + ",".join(p["skip"]))
    for name in p.get("domain") or ():
        argv += ["--domain", name]
    argv += list(extra)
    return argv


def run_json(module, argv):
    """(rc, document) or fail_json with virtdoctor's own message when it exits 3
    or prints something that is not its JSON document."""
    rc, out, err = module.run_command(argv, check_rc=False,
                                      environ_update={"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "NO_COLOR": "1"})
    message = next((line.strip() for line in (err or "").splitlines() if line.strip()), "")
    if rc == EXIT_TOOL:
        module.fail_json(msg=message or "virtdoctor exited with status 3", rc=rc, cmd=argv, stdout=out, stderr=err)
    try:
        doc = json.loads(out)
        if not isinstance(doc, dict) or "findings" not in doc:
            raise ValueError("not a virtdoctor document")
    except ValueError:
        module.fail_json(msg="virtdoctor did not print its JSON document: %s" % (message or (out or "").strip()[:200]
                                                                              or "no output"),
                         rc=rc, cmd=argv, stdout=out, stderr=err)
    return rc, doc


def failing(doc):
    return sorted(set(f["id"] for f in doc.get("findings", []) if f.get("status") == "fail"))


def common_result(rc, doc):
    return dict(rc=rc, findings=doc.get("findings", []), summary=doc.get("summary", {}),
                version=doc.get("virtdoctor"), target=doc.get("target", {}), failing=failing(doc))

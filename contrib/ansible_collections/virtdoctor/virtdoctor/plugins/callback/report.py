# -*- coding: utf-8 -*-
# Copyright: virtdoctor developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: report
type: aggregate
short_description: Merge every host's virtdoctor result into one fleet document
version_added: "0.1.0"
description:
  - Collects the results of the virtdoctor_check and virtdoctor_fix tasks of every host and, at the
    end of the playbook, writes one JSON fleet document; optionally one JUnit XML file
    (a testsuite per host, a testcase per finding).
  - "The document: C(hosts) (per host: rc, summary, version, target, failing slugs, the findings that did
    not pass, and the fix outcomes), C(failing) (slug -> sorted hosts where it fails), C(unreachable) (hosts),
    C(errors) (host -> message when virtdoctor itself could not run)."
requirements:
  - enable in ansible.cfg (C(callbacks_enabled = virtdoctor.virtdoctor.report)) or E(ANSIBLE_CALLBACKS_ENABLED)
options:
  path:
    description: Where the fleet document goes.
    default: virtdoctor-fleet.json
    type: path
    env:
      - name: VIRTDOCTOR_FLEET_REPORT
    ini:
      - section: callback_virtdoctor_report
        key: path
  junit:
    description: Also write a JUnit XML file here.
    type: path
    env:
      - name: VIRTDOCTOR_FLEET_JUNIT
    ini:
      - section: callback_virtdoctor_report
        key: junit
"""

import datetime
import json
import os
import xml.etree.ElementTree as ET

from ansible.plugins.callback import CallbackBase

MODULES = ("virtdoctor_check", "virtdoctor_fix")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "virtdoctor.virtdoctor.report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.hosts = {}
        self.unreachable = set()
        self.errors = {}

    @staticmethod
    def _module(result):
        action = result._task.action or ""
        return action.rsplit(".", 1)[-1] if action.rsplit(".", 1)[-1] in MODULES else None

    def _record(self, result):
        module = self._module(result)
        if module is None:
            return
        host = result._host.get_name()
        res = result._result
        if "findings" not in res:  # virtdoctor could not run: its message
            self.errors[host] = res.get("msg", "")
            return
        entry = self.hosts.setdefault(host, {})
        if module == "virtdoctor_fix":
            entry["fix"] = [dict((k, a.get(k)) for k in ("id", "subject", "status", "summary", "detail"))
                            for a in res.get("actions", [])]
            entry["fix_changed"] = bool(res.get("changed"))
            if "rc" in entry:  # findings of a check run are the current state; a fix run's are from before
                return
        entry.update(rc=res.get("rc"), summary=res.get("summary", {}), version=res.get("version"),
                     target=res.get("target", {}),
                     failing=sorted(set(f["id"] for f in res["findings"] if f.get("status") == "fail")),
                     findings=[f for f in res["findings"] if f.get("status") != "pass"])
        self.errors.pop(host, None)

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result)

    def v2_runner_on_unreachable(self, result):
        self.unreachable.add(result._host.get_name())

    def document(self):
        failing = {}
        for host, entry in self.hosts.items():
            for slug in entry.get("failing", ()):
                failing.setdefault(slug, []).append(host)
        return {
            "fleet": 1,
            "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "hosts": dict(sorted(self.hosts.items())),
            "failing": dict((slug, sorted(hosts)) for slug, hosts in sorted(failing.items())),
            "unreachable": sorted(self.unreachable),
            "errors": dict(sorted(self.errors.items())),
        }

    def junit(self, doc):
        top = ET.Element("testsuites", name="virtdoctor fleet")
        for host, entry in doc["hosts"].items():
            findings = entry.get("findings", [])
            summary = entry.get("summary", {})
            suite = ET.SubElement(top, "testsuite", name=host, hostname=host,
                                  tests=str(sum(summary.values()) if summary else len(findings)),
                                  failures=str(summary.get("fail", 0)), errors=str(summary.get("error", 0)),
                                  skipped=str(summary.get("skip", 0)))
            for f in findings:
                case = ET.SubElement(suite, "testcase", name=f["id"], classname="%s.%s" % (host, f.get("subject", "")))
                if f["status"] == "fail":
                    el = ET.SubElement(case, "failure", message=f.get("message", ""), type=f.get("severity", "error"))
                    el.text = f.get("message", "")
                elif f["status"] == "error":
                    ET.SubElement(case, "error", message=f.get("message", ""))
                elif f["status"] == "skip":
                    ET.SubElement(case, "skipped", message=f.get("message", ""))
        for host in doc["unreachable"] + list(doc["errors"]):
            suite = ET.SubElement(top, "testsuite", name=host, hostname=host, tests="1", failures="0", errors="1",
                                  skipped="0")
            case = ET.SubElement(suite, "testcase", name="virtdoctor", classname=host)
            ET.SubElement(case, "error", message=doc["errors"].get(host, "unreachable"))
        return ET.tostring(top, encoding="unicode")

    def _write(self, path, text):
        path = os.path.abspath(os.path.expanduser(path))
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return path

    def v2_playbook_on_stats(self, stats):
        doc = self.document()
        path = self._write(self.get_option("path"), json.dumps(doc, indent=2, sort_keys=False) + "\n")
        self._display.display("virtdoctor fleet report: %s (%d hosts, %d failing checks, %d unreachable)"
                              % (path, len(doc["hosts"]), len(doc["failing"]), len(doc["unreachable"])))
        if self.get_option("junit"):
            self._write(self.get_option("junit"), '<?xml version="1.0" encoding="UTF-8"?>\n' + self.junit(doc) + "\n")

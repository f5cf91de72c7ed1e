"""--format junit, nagios, prometheus (+ --textfile) and sarif: each rendered from
the same run as --format json and read back with a real parser (ElementTree for
JUnit, prometheus_client's exposition parser, json for SARIF), then compared
with the JSON document finding by finding."""
from __future__ import annotations

import json
import os
import re
import stat
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from virtdoctor import __version__
from virtdoctor.cli import main

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def root(fake_root):
    """A host with an /etc and nothing else: no daemon, no /dev/kvm, no QEMU
    (the checks find real failures and skips on it)."""
    fake_root.mkdir("/etc")
    fake_root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\n')
    return fake_root


def as_json(capsys, root, *extra):
    rc, out, err = run(capsys, "--offline", "--root", root, "--format", "json", "check", *extra)
    return rc, json.loads(out)


def test_junit_one_suite_per_subject_one_case_per_finding(root, capsys):
    rc_json, doc = as_json(capsys, root)
    rc, out, err = run(capsys, "--offline", "--root", root, "--format", "junit", "check")
    assert rc == rc_json and rc == 2, err
    top = ET.fromstring(out)
    assert top.tag == "testsuites"
    subjects = list(dict.fromkeys(f["subject"] for f in doc["findings"]))
    assert [s.get("name") for s in top.findall("testsuite")] == subjects
    cases = {(s.get("name"), c.get("name")): c for s in top.findall("testsuite") for c in s.findall("testcase")}
    assert len(cases) == len(doc["findings"])
    kinds = {"fail": "failure", "error": "error", "skip": "skipped"}
    for f in doc["findings"]:
        case = cases[(f["subject"], f["id"])]
        children = [c.tag for c in case]
        assert children == ([kinds[f["status"]]] if f["status"] in kinds else []), f
        if f["status"] == "fail":
            assert case[0].get("message") == f["message"]
            assert case[0].get("type") == f["severity"]
    assert int(top.get("tests")) == len(doc["findings"])
    assert int(top.get("failures")) == doc["summary"]["fail"] > 0
    assert int(top.get("skipped")) == doc["summary"]["skip"] > 0
    assert int(top.get("errors")) == doc["summary"]["error"]


def test_nagios_status_line_and_perfdata(root, capsys):
    rc_json, doc = as_json(capsys, root)
    rc, out, err = run(capsys, "--offline", "--root", root, "--format", "nagios", "check")
    assert rc == rc_json
    first, *rest = out.splitlines()
    m = re.fullmatch(r"VIRTDOCTOR (OK|WARNING|CRITICAL|UNKNOWN) - ([^|]*) \| (.*)", first)
    assert m, first
    assert m.group(1) == {0: "OK", 1: "WARNING", 2: "CRITICAL"}[rc]
    perf = dict(p.split("=", 1) for p in m.group(3).split())
    failed = [f for f in doc["findings"] if f["status"] == "fail"]
    assert int(perf["errors"]) == sum(f["severity"] == "error" for f in failed)
    assert int(perf["warnings"]) == sum(f["severity"] != "error" for f in failed)
    assert int(perf["ok"]) == doc["summary"]["pass"]
    assert int(perf["skipped"]) == doc["summary"]["skip"]
    assert re.fullmatch(r"\d+\.\d+s", perf["duration"])
    for f in failed:
        assert f["id"] in m.group(2)
    assert len(rest) == len(failed) + doc["summary"]["error"]


def test_nagios_unknown_on_stdout_when_virtdoctor_cannot_run(capsys, tmp_path):
    rc, out, err = run(capsys, "--format", "nagios", "--root", tmp_path / "missing", "check")
    assert rc == 3
    assert out == f"VIRTDOCTOR UNKNOWN - --root {tmp_path / 'missing'}: not a directory\n"


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_textfile_series(root, capsys, tmp_path):
    rc_json, doc = as_json(capsys, root)
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    path = textdir / "virtdoctor.prom"
    rc, out, err = run(capsys, "--offline", "--root", root, "check", "--textfile", path)
    assert rc == rc_json
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in textdir.iterdir()) == ["virtdoctor.prom"]  # no temporary file left
    text = path.read_text()
    fams = families(text)
    rc2, listing, _ = run(capsys, "--offline", "--root", root, "--format", "json", "checks")
    assert rc2 == 0
    checks = {c["id"]: c["severity"] for c in json.loads(listing)["checks"]}
    failures = {s.labels["id"]: s for s in fams["virtdoctor_check_failures"].samples}
    # one series per check that ran, passing ones at 0
    ran = {f["id"] for f in doc["findings"]}
    assert ran <= set(failures)
    assert set(failures) == set(checks)
    assert all(failures[s].labels["severity"] == checks[s] for s in failures)
    for slug, sample in failures.items():
        assert sample.value == sum(f["id"] == slug and f["status"] == "fail" for f in doc["findings"])
    bad = [f for f in doc["findings"] if f["status"] != "pass"]
    got = {(s.labels["id"], s.labels["subject"], s.labels["status"], s.labels["severity"])
           for s in fams["virtdoctor_finding"].samples}
    assert got == {(f["id"], f["subject"], f["status"], f["severity"]) for f in bad}
    for s in fams["virtdoctor_finding"].samples:
        assert s.value == sum((f["id"], f["subject"], f["status"]) == (s.labels["id"], s.labels["subject"],
                                                                      s.labels["status"]) for f in bad)
    by_status = {s.labels["status"]: s.value for s in fams["virtdoctor_checks"].samples}
    assert by_status == {k: float(v) for k, v in doc["summary"].items()}
    assert fams["virtdoctor_last_run_exit_code"].samples[0].value == rc
    assert fams["virtdoctor_last_run_duration_seconds"].samples[0].value > 0
    import time

    assert abs(fams["virtdoctor_last_run_timestamp_seconds"].samples[0].value - time.time()) < 120
    assert [s.labels for s in fams["virtdoctor_build_info"].samples] == [{"version": __version__}]
    # no messages and no paths in any label
    for fam in fams.values():
        for s in fam.samples:
            for k, v in s.labels.items():
                assert k in ("id", "severity", "subject", "status", "version"), k
                assert " " not in v and not v.startswith("/"), (k, v)
    # stdout is still the text report; --format prometheus prints the same series
    assert "virtdoctor_check_failures" not in out
    rc3, out3, _ = run(capsys, "--offline", "--root", root, "--format", "prometheus", "check")
    assert set(families(out3)) == set(fams)


def test_textfile_replaced_atomically_and_exit_3_recorded(root, capsys, tmp_path):
    path = tmp_path / "virtdoctor.prom"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    rc, _, _ = run(capsys, "--offline", "--root", root, "check", "--textfile", path)
    assert rc == 2 and "virtdoctor_check_failures" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    rc, out, err = run(capsys, "--offline", "--root", root, "check", "--only", "no-such-check", "--textfile", path)
    assert rc == 3 and err.startswith("virtdoctor: ")
    fams = families(path.read_text())
    assert fams["virtdoctor_last_run_exit_code"].samples[0].value == 3
    assert "virtdoctor_check_failures" not in fams


def test_textfile_in_missing_directory_is_one_line(root, capsys, tmp_path):
    rc, out, err = run(capsys, "--offline", "--root", root, "check", "--textfile", tmp_path / "nope" / "v.prom")
    assert rc == 3
    assert err == f"virtdoctor: --textfile {tmp_path / 'nope' / 'v.prom'}: {tmp_path / 'nope'} is not a directory\n"


def test_prometheus_client_missing_is_one_line(root, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    rc, out, err = run(capsys, "--offline", "--root", root, "--format", "prometheus", "check")
    assert rc == 3
    assert err.count("\n") == 1 and "pip install 'virtdoctor[prometheus]'" in err
    rc, out, err = run(capsys, "--offline", "--root", root, "check", "--textfile", tmp_path / "v.prom")
    assert rc == 3 and "prometheus_client" in err
    assert not (tmp_path / "v.prom").exists()


@pytest.mark.parametrize("fmt, argv", [("prometheus", ["preflight", "x.xml"]), ("sarif", ["check"]),
                                       ("junit", ["fix"]), ("nagios", ["diagnose", "vm"])])
def test_format_for_the_wrong_command_is_a_usage_error(capsys, fmt, argv):
    rc, out, err = run(capsys, "--offline", "--format", fmt, *argv)
    assert rc == 3
    assert f"--format {fmt} is for" in err


BROKEN = """<domain type='kvm'>
  <name>sarif</name>
  <memory unit='KiB'>65536</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/s.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
    </disk>
    <interface type='user'>
      <mac address='00:11:22:33:44:55'/>
    </interface>
    <bogus/>
  </devices>
</domain>
"""


@pytest.mark.skipif(not SCHEMA.is_file(), reason="libvirt's schemas are not installed (libvirt0)")
def test_sarif_rules_results_and_lines(capsys, tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text(BROKEN)
    rc_json, out_json, _ = run(capsys, "--offline", "--format", "json", "preflight", path)
    doc = json.loads(out_json)
    rc, out, err = run(capsys, "--offline", "--format", "sarif", "preflight", path)
    assert rc == rc_json == 2
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0" and sarif["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = sarif["runs"]
    rules = run_["tool"]["driver"]["rules"]
    assert run_["tool"]["driver"]["name"] == "virtdoctor"
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids))
    for r in rules:
        assert r["shortDescription"]["text"] and r["help"]["text"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
    failed = [f for f in doc["findings"] if f["status"] == "fail"]
    assert {(r["ruleId"], r["message"]["text"]) for r in run_["results"]} == {(f["id"], f["message"]) for f in failed}
    lines = BROKEN.splitlines()
    for r in run_["results"]:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
        assert r["level"] in ("error", "warning", "note")
        (loc,) = r["locations"]
        phys = loc["physicalLocation"]
        assert phys["artifactLocation"]["uri"] == path.as_uri()
        assert run_["artifacts"][phys["artifactLocation"]["index"]]["location"]["uri"] == path.as_uri()
        line = lines[phys["region"]["startLine"] - 1]
        if r["ruleId"] == "schema-invalid":
            assert "<bogus/>" in line
        if r["ruleId"] == "mac-prefix":
            assert "00:11:22:33:44:55" in line
    assert {"schema-invalid", "mac-prefix", "boot-order-conflict"} <= {r["ruleId"] for r in run_["results"]}
    help_ = rules[ids.index("schema-invalid")]["help"]
    assert "Fix:" in help_["text"] and help_["markdown"]
    assert run_["invocations"][0]["executionSuccessful"] is True

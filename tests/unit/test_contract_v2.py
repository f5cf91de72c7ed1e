"""Contract v2 (DESIGN.md): the JSON Schema shipped in the package validates the real
output of check, diagnose, explain, preflight and fix; --output FILE gets the document too,
whatever the exit status."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from virtdoctor.cli import main
from virtdoctor.render.report import schema_path

DATA = Path(__file__).resolve().parents[1] / "data" / "virt-install"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(Path(schema_path()).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def root(fake_root):
    fake_root.mkdir("/etc")
    fake_root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\n')
    return fake_root


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def valid(validator, out: str, command: str) -> dict:
    doc = json.loads(out)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    assert doc["schema"] == 2 and doc["command"] == command
    return doc


def test_check(validator, root, capsys):
    rc, out, _ = run(capsys, "--offline", "--root", root, "--format", "json", "check")
    doc = valid(validator, out, "check")
    assert rc == 2 and doc["target"]["facts_source"] == "root" and doc["target"]["root"] == str(root)


def test_diagnose_on_the_test_driver(validator, root, capsys):
    rc, out, _ = run(capsys, "--root", root, "-c", "test:///default", "--format", "json", "diagnose", "test")
    doc = valid(validator, out, "diagnose")
    assert doc["target"]["uri"] == "test:///default" and doc["target"]["domain"] == "test"


@pytest.mark.parametrize("argv", [
    ["explain", "kvm-device-permission"],
    ["explain", "Could not access KVM kernel module: Permission denied"],
    ["explain", "nothing libvirt would say"],
])
def test_explain(validator, capsys, argv):
    rc, out, _ = run(capsys, "--format", "json", *argv)
    doc = valid(validator, out, "explain")
    assert doc["target"]["uri"] is None and doc["target"]["facts_source"] == "live"


def test_explain_log(validator, capsys, tmp_path):
    log = tmp_path / "libvirtd.log"
    log.write_text("2026-11-25 20:00:58.119+0000: 1240: error : qemuProcessStart:7712 : "
                   "Could not access KVM kernel module: Permission denied\n")
    rc, out, _ = run(capsys, "--format", "json", "explain", "--log", log)
    assert rc == 0 and valid(validator, out, "explain")["matches"][0]["count"] == 1


def test_preflight(validator, capsys):
    rc, out, _ = run(capsys, "--offline", "--format", "json", "preflight", DATA / "cdrom.xml", DATA / "import.xml")
    doc = valid(validator, out, "preflight")
    assert len(doc["target"]["inputs"]) == 3


def test_fix_dry_run(validator, root, capsys):
    rc, out, _ = run(capsys, "--offline", "--root", root, "--format", "json", "fix", "--dry-run")
    doc = valid(validator, out, "fix")
    assert doc["actions"], "the fake root has failures with plans"


def test_output_file_in_text_mode(validator, root, capsys, tmp_path):
    dest = tmp_path / "report.json"
    rc, out, _ = run(capsys, "--offline", "--root", root, "--output", dest, "check")
    assert rc == 2 and "ok," in out  # the text report on stdout
    doc = valid(validator, dest.read_text(), "check")
    assert doc["summary"]["fail"] > 0


def test_output_file_in_json_mode_equals_stdout(validator, capsys, tmp_path):
    dest = tmp_path / "report.json"
    rc, out, _ = run(capsys, "--offline", "--format", "json", "preflight", DATA / "import.xml", "--output", dest)
    assert json.loads(dest.read_text()) == json.loads(out)


def test_output_file_when_the_tool_fails(validator, capsys, tmp_path):
    dest = tmp_path / "report.json"
    rc, out, err = run(capsys, "-c", "test:///default", "--output", dest, "diagnose", "no-such-vm")
    assert rc == 3 and err.startswith("virtdoctor: no domain named")
    doc = valid(validator, dest.read_text(), "diagnose")
    assert doc["error"].startswith("no domain named 'no-such-vm'")


def test_output_file_of_fix_in_text_mode(validator, root, capsys, tmp_path):
    dest = tmp_path / "fix.json"
    rc, out, _ = run(capsys, "--offline", "--root", root, "--output", dest, "fix", "--dry-run")
    assert "plan" in out
    assert valid(validator, dest.read_text(), "fix")["actions"]


def test_output_file_of_explain_in_text_mode(validator, capsys, tmp_path):
    dest = tmp_path / "explain.json"
    rc, out, _ = run(capsys, "--output", dest, "explain", "Could not access KVM kernel module: Permission denied")
    assert rc == 0 and "kvm-device-permission" in out
    assert valid(validator, dest.read_text(), "explain")["matches"][0]["id"] == "kvm-device-permission"

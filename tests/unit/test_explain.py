"""`virtdoctor explain` through the real CLI entry point."""
from __future__ import annotations

import io
import json
import sys

import pytest

from virtdoctor.cli import main

KVM_TAIL = ("internal error: qemu unexpectedly closed the monitor: 2026-11-25T20:00:58.119142Z qemu-system-x86_64: "
            "warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]\n"
            "Could not access KVM kernel module: Permission denied\n"
            "2026-11-25T20:00:58.119142Z qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied")


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_slug_prints_the_entry(capsys):
    status, out, _ = run(capsys, "explain", "kvm-device-permission")
    assert status == 0
    assert out.startswith("kvm-device-permission: QEMU cannot open /dev/kvm")
    assert "chmod 0660 /dev/kvm" in out and "safe" in out and "Could not access KVM kernel module" in out


def test_slug_as_json(capsys):
    status, out, _ = run(capsys, "--format", "json", "explain", "nvram-undefine")
    doc = json.loads(out)
    assert status == 0 and doc["matches"][0]["id"] == "nvram-undefine"
    assert doc["entry"]["commands"] == ["virsh undefine NAME --nvram", "virsh undefine NAME --keep-nvram"]


def test_text_names_the_slug_and_fix(capsys):
    status, out, _ = run(capsys, "explain", KVM_TAIL)
    assert status == 0
    assert "kvm-device-permission" in out and "chgrp kvm /dev/kvm" in out
    assert "matched: Could not access KVM kernel module: Permission denied" in out


def test_json_shape_best_first(capsys):
    status, out, _ = run(capsys, "explain", "--format", "json",
                         "unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not support virt type 'kvm'")
    doc = json.loads(out)
    assert status == 0
    ids = [m["id"] for m in doc["matches"]]
    assert ids == ["kvm-device-permission", "kvm-device-missing"]
    for m in doc["matches"]:
        assert {"id", "score", "title", "cause", "fix"} <= set(m)
    assert doc["matches"][0]["score"] > doc["matches"][1]["score"]


def test_stdin(capsys, monkeypatch):
    stdin(monkeypatch, b"error: Failed to start domain 'web01'\n"
                       b"error: Cannot access storage file '/home/u/web01.qcow2' (as uid:64055, gid:64055): Permission denied\n")
    status, out, _ = run(capsys, "explain", "-")
    assert status == 0 and "disk-source-permission" in out


def test_empty_stdin_is_status_3(capsys, monkeypatch):
    stdin(monkeypatch, b"  \n")
    status, out, err = run(capsys, "explain", "-")
    assert status == 3 and out == ""
    assert err.strip() == "virtdoctor: explain -: standard input is empty"


def test_unknown_text_is_honest_and_parsed(capsys):
    status, out, _ = run(capsys, "explain",
                         "error: Requested operation is not valid: Refusing to undefine while domain managed save image exists")
    assert status == 1
    assert out.startswith("Unknown: no catalogue entry matches this message.")
    assert "VIR_ERR_OPERATION_INVALID" in out


def test_unknown_text_json(capsys):
    status, out, _ = run(capsys, "--format", "json", "explain",
                         "libvirt: QEMU Driver error : operation failed: something new: No space left on device")
    doc = json.loads(out)
    assert status == 1 and doc["matches"] == []
    assert doc["parsed"]["code"] == "VIR_ERR_OPERATION_FAILED"
    assert doc["parsed"]["domain"] == "QEMU Driver" and doc["parsed"]["errno"] == "ENOSPC"


def test_unknown_slug_is_a_tool_error(capsys):
    status, out, err = run(capsys, "explain", "kvm-permisson")
    assert status == 3 and out == "" and "unknown slug 'kvm-permisson'" in err


def test_no_argument_is_a_usage_error(capsys):
    status, _, err = run(capsys, "explain")
    assert status == 3 and err.startswith("virtdoctor: explain:")


LOG = (
    "2026-11-25 20:00:57.001+0000: 1234: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)\n"
    "2026-11-25 20:00:58.119+0000: 1240: error : qemuProcessReportLogError:2051 : internal error: qemu unexpectedly "
    "closed the monitor: Could not access KVM kernel module: Permission denied\n"
    "2026-11-25 20:03:00.000+0000: 1240: error : virNetDevBridgeAddPort:123 : Unable to add bridge eth0 port vnet0: "
    "Operation not supported\n"
    "2026-11-25 20:05:00.000+0000: 1240: error : qemuProcessReportLogError:2051 : internal error: qemu unexpectedly "
    "closed the monitor: Could not access KVM kernel module: Permission denied\n"
)


def test_log_counts_and_times(capsys, tmp_path):
    path = tmp_path / "libvirtd.log"
    path.write_text(LOG)
    status, out, _ = run(capsys, "explain", "--log", str(path))
    assert status == 0
    assert "kvm-device-permission" in out and "bridge-source-not-bridge" in out
    assert "seen:    2 lines, first 2026-11-25T20:00:58.119Z, last 2026-11-25T20:05:00.000Z" in out


def test_log_json(capsys, tmp_path):
    path = tmp_path / "libvirtd.log"
    path.write_text(LOG)
    status, out, _ = run(capsys, "--format", "json", "explain", "--log", str(path))
    doc = json.loads(out)
    by_id = {m["id"]: m for m in doc["matches"]}
    assert status == 0 and doc["log"]["lines"] == 4
    assert by_id["kvm-device-permission"]["count"] == 2
    assert by_id["bridge-source-not-bridge"]["first"] == "2026-11-25T20:03:00.000Z"


def test_log_with_nothing_known(capsys, tmp_path):
    path = tmp_path / "quiet.log"
    path.write_text(LOG.splitlines()[0] + "\n")
    status, out, _ = run(capsys, "explain", "--log", str(path))
    assert status == 1 and "nothing known in 1 lines" in out


def test_binary_invalid_utf8_log(capsys, tmp_path):
    path = tmp_path / "binary.log"
    path.write_bytes(bytes(range(256)) * 100 + b"\n\xff\xfe cannot undefine transient domain \xc3\x28\n" + b"\x00" * (2 << 20))
    status, out, _ = run(capsys, "explain", "--log", str(path))
    assert status == 0 and "transient-undefine" in out


def test_unreadable_log_is_status_3(capsys, tmp_path):
    status, out, err = run(capsys, "explain", "--log", str(tmp_path / "absent.log"))
    assert status == 3 and out == ""
    assert err.startswith("virtdoctor: cannot read") and err.count("\n") == 1


def test_control_bytes_of_a_matched_line_are_not_sent_to_the_terminal(capsys, tmp_path):
    path = tmp_path / "ctl.log"
    path.write_bytes(b"\x1b[2J\x00\x07 Could not access KVM kernel module: Permission denied\n")
    status, out, _ = run(capsys, "explain", "--log", str(path))
    assert status == 0 and "kvm-device-permission" in out
    assert "\x1b" not in out and "\x00" not in out and "\x07" not in out

"""virtdoctor preflight: many files in one report, stdin, schema findings first, the exit
status contract (0 clean, 1 warnings, 2 errors, 3 unusable input), and bad input turned into
one line on stderr without a traceback. Runs the CLI in-process with --offline: nothing is
ever defined, host-needing checks skip."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from virtdoctor.cli import main

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
needs_schema = pytest.mark.skipif(not SCHEMA.is_file(), reason="libvirt's schemas are not installed (libvirt0)")


def domain(name="pf", *, os_extra="", devices="", features="<features><acpi/></features>"):
    return (f"<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>65536</memory>\n  <vcpu>1</vcpu>\n"
            f"  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n{os_extra}  </os>\n  {features}\n"
            f"  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{devices}  </devices>\n</domain>\n")


VDA = ("    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'{cache}/>\n"
       "      <source file='/var/lib/libvirt/images/pf.qcow2'/>\n      <target dev='vda' bus='virtio'/>\n{boot}"
       "    </disk>\n")
CLEAN = domain(devices=VDA.format(cache="", boot=""))
WARNS = domain(devices=VDA.format(cache=" cache='writeback'", boot=""))
BROKEN = domain(os_extra="    <boot dev='hd'/>\n", devices=VDA.format(cache="", boot="      <boot order='1'/>\n")
                + "    <disk type='file' device='cdrom'>\n      <target dev='vdb' bus='virtio'/>\n"
                  "      <readonly/>\n    </disk>\n    <bogus/>\n")
MINE = "schema-invalid,boot-order-conflict,cdrom-on-virtio,disk-cache-unsafe,disk-source-missing"


_UNSET = object()


def preflight(capsys, *args, stdin=_UNSET, monkeypatch=None):
    if stdin is not _UNSET:
        monkeypatch.setattr(sys, "stdin", stdin)
    rc = main(["--offline", "--format", "json", "preflight", *args])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return str(p)


@needs_schema
def test_many_files_one_report_schema_first_every_problem(tmp_path, capsys):
    a, b = write(tmp_path, "a.xml", BROKEN), write(tmp_path, "b.xml", CLEAN)
    rc, doc, err = preflight(capsys, a, b, "--only", MINE)
    assert rc == 2 and err == ""
    assert doc["command"] == "preflight" and doc["target"]["inputs"] == [a, b] and doc["errors"] == []
    subjects = [f["subject"] for f in doc["findings"]]
    assert set(subjects) == {f"xml:{a}", f"xml:{b}"}
    mine = [f for f in doc["findings"] if f["subject"] == f"xml:{a}"]
    assert mine[0]["id"] == "schema-invalid"  # schema findings come first
    failed = {f["id"] for f in mine if f["status"] == "fail"}
    assert failed == {"schema-invalid", "boot-order-conflict", "cdrom-on-virtio"}  # all of them, in one run
    bogus = next(f for f in mine if f["id"] == "schema-invalid" and f["status"] == "fail")
    assert bogus["evidence"]["element"] == "bogus" and bogus["evidence"]["line"] == 22
    skip = next(f for f in mine if f["id"] == "disk-source-missing")
    assert skip["status"] == "skip" and "--offline" in skip["message"]
    assert all(f["status"] in ("pass", "skip") for f in doc["findings"] if f["subject"] == f"xml:{b}")


@pytest.mark.parametrize("text, rc", [pytest.param(CLEAN, 0, id="clean"), pytest.param(WARNS, 1, id="warnings"),
                                      pytest.param(BROKEN, 2, id="errors")])
def test_exit_status(tmp_path, capsys, text, rc):
    got, doc, err = preflight(capsys, write(tmp_path, "x.xml", text), "--only", MINE)
    assert got == rc and err == ""


def test_stdin(capsys, monkeypatch):
    stdin = io.TextIOWrapper(io.BytesIO(BROKEN.encode()))
    rc, doc, err = preflight(capsys, "-", "--only", "boot-order-conflict", stdin=stdin, monkeypatch=monkeypatch)
    assert rc == 2
    [f] = doc["findings"]
    assert f["subject"] == "xml:-" and f["status"] == "fail"
    assert f["fix"]["auto"] == "manual"  # nothing to rewrite for stdin


def test_fix_of_a_file_rewrites_that_file(tmp_path, capsys):
    path = write(tmp_path, "a.xml", BROKEN)
    rc, doc, err = preflight(capsys, path, "--only", "boot-order-conflict")
    [f] = doc["findings"]
    assert f["fix"]["auto"] == "unsafe" and f["fix"]["commands"][0].startswith(f"write {path}")
    assert Path(path).read_text() == BROKEN  # preflight never changes anything


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<domain type='kvm'><name>&lol4;</name></domain>
"""


@pytest.mark.parametrize("content, words", [
    pytest.param("this is not xml", "not well-formed XML", id="not-xml"),
    pytest.param("<network><name>n</name></network>", "not <domain>", id="not-a-domain"),
    pytest.param(BOMB, "entities", id="entity-bomb"),
    pytest.param(b"<domain>" + b" " * (50 * 1024 * 1024) + b"</domain>", "larger than", id="50MB"),
    pytest.param(domain().replace("<name>pf</name>", ""), "no <name>", id="missing-name"),
    pytest.param("", "empty", id="empty-file"),
])
def test_bad_input_one_line_exit_3(tmp_path, capsys, content, words):
    path = write(tmp_path, "bad.xml", content)
    rc, doc, err = preflight(capsys, path)
    assert rc == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"virtdoctor: {path}") and words in lines[0]
    assert "Traceback" not in err
    assert doc["errors"] == [{"input": path, "error": lines[0].removeprefix("virtdoctor: ")}]
    assert doc["findings"] == []


def test_unreadable_inputs(tmp_path, capsys, monkeypatch):
    rc, doc, err = preflight(capsys, str(tmp_path / "nope.xml"))
    assert rc == 3 and "no such file" in err
    rc, doc, err = preflight(capsys, str(tmp_path))
    assert rc == 3 and "is a directory" in err
    rc, doc, err = preflight(capsys, "-", stdin=io.TextIOWrapper(io.BytesIO(b"")), monkeypatch=monkeypatch)
    assert rc == 3 and "stdin is empty" in err
    rc, doc, err = preflight(capsys, "-", stdin=None, monkeypatch=monkeypatch)
    assert rc == 3 and "stdin is closed" in err
    closed = io.TextIOWrapper(io.BytesIO(b"x"))
    closed.close()
    rc, doc, err = preflight(capsys, "-", stdin=closed, monkeypatch=monkeypatch)
    assert rc == 3 and "cannot read stdin" in err and "Traceback" not in err


def test_unusable_file_among_good_ones_still_reports_the_good_ones(tmp_path, capsys):
    good, bad = write(tmp_path, "good.xml", BROKEN), write(tmp_path, "bad.xml", "<<<")
    rc, doc, err = preflight(capsys, good, bad, "--only", "boot-order-conflict")
    assert rc == 3  # an unusable input: the run failed, whatever the rest says
    assert [f["subject"] for f in doc["findings"]] == [f"xml:{good}"]
    assert [e["input"] for e in doc["errors"]] == [bad]
    assert len(err.strip().splitlines()) == 1


def test_text_output_names_the_file(tmp_path, capsys):
    path = write(tmp_path, "t.xml", BROKEN)
    rc = main(["--offline", "preflight", path, "--only", "boot-order-conflict"])
    out = capsys.readouterr().out
    assert rc == 2 and f"xml:{path}" in out and "per-device boot elements" in out


def test_usage_errors(capsys):
    assert main(["preflight"]) == 3
    assert main(["--offline", "preflight", "-", "-"]) == 3
    assert main(["--offline", "preflight", "x.xml", "--only", "no-such-slug"]) == 3


def test_fix_rewrites_files_only_with_unsafe_and_reports_the_fixed_state(tmp_path, capsys):
    path = write(tmp_path, "a.xml", BROKEN.replace("    <bogus/>\n", ""))
    bk = str(tmp_path / "bk")
    rc, doc, err = preflight(capsys, path, "--only", MINE, "--fix", "--backup-dir", bk)
    assert rc == 2 and {a["status"] for a in doc["actions"]} == {"skipped"}
    assert Path(path).read_text() == BROKEN.replace("    <bogus/>\n", "")  # unsafe edits need --unsafe
    rc, doc, err = preflight(capsys, path, "--only", MINE, "--fix", "--unsafe", "--backup-dir", bk)
    assert rc == 0, doc["findings"]
    assert sorted(a["id"] for a in doc["actions"]) == ["boot-order-conflict", "cdrom-on-virtio"]
    assert all(a["status"] == "fixed" and a["verified"] for a in doc["actions"])
    text = Path(path).read_text()
    assert "<boot dev=" not in text and "<target dev='hda' bus='ide'/>" in text
    backups = sorted(Path(bk).glob("*/files" + path))
    assert backups and backups[0].read_text() == BROKEN.replace("    <bogus/>\n", "")


def test_fix_leaves_stdin_and_unfixable_problems_alone(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "b.xml", BROKEN)  # <bogus/>: schema-invalid has no automatic fix
    rc, doc, err = preflight(capsys, path, "--only", "schema-invalid", "--fix", "--unsafe",
                             "--backup-dir", str(tmp_path / "bk"))
    assert doc["actions"] == [] and Path(path).read_text() == BROKEN

"""preflight reads every <domain> document of an input: virt-install --print-xml writes two
concatenated documents for installs (recorded real output in tests/data/virt-install/);
each is checked with subject xml:PATH#N; anything that is not a sequence of domain
documents is still one line on stderr and status 3."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from virtdoctor.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "virt-install"


def run(capsys, *args):
    rc = main(["--offline", "--format", "json", "preflight", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("kind, count", [("cdrom", 2), ("location", 2), ("import", 1)])
def test_virt_install_print_xml_documents(capsys, kind, count):
    path = DATA / f"{kind}.xml"
    rc, doc, err = run(capsys, path)
    assert rc != 3 and err == "" and doc["errors"] == []
    subjects = list(dict.fromkeys(f["subject"] for f in doc["findings"]))
    want = [f"xml:{path}"] if count == 1 else [f"xml:{path}#{i}" for i in range(1, count + 1)]
    assert subjects == want
    assert doc["target"]["inputs"] == [s[len("xml:"):] for s in want]
    schema = [f for f in doc["findings"] if f["id"] == "schema-invalid"]
    assert [f["status"] for f in schema] == ["pass"] * count  # both documents are valid libvirt XML


def test_install_documents_differ_where_virt_install_makes_them_differ(capsys, monkeypatch):
    """The first document boots the installer (cdrom first, destroy on reboot), the second
    the installed system: both reach the checks, from stdin too."""
    data = (DATA / "cdrom.xml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    rc = main(["--offline", "--format", "json", "preflight", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert rc != 3
    assert {f["subject"] for f in doc["findings"]} == {"xml:-#1", "xml:-#2"}


@pytest.mark.parametrize("tail, problem", [
    ("<network><name>n</name></network>\n", "not <domain>"),
    ("trailing words\n", "not well-formed"),
    ("<domain><name>x</name>", "not well-formed"),
    ("<!DOCTYPE d [<!ENTITY e 'x'>]><domain><name>&e;</name></domain>", ""),
])
def test_anything_but_domain_documents_is_one_line_and_status_3(capsys, tmp_path, tail, problem):
    path = tmp_path / "mixed.xml"
    path.write_bytes((DATA / "import.xml").read_bytes() + tail.encode())
    rc, doc, err = run(capsys, path)
    assert rc == 3
    assert err.count("\n") == 1 and err.startswith("virtdoctor: ") and problem in err
    assert doc["errors"] and doc["findings"] == []


def test_a_single_document_is_parsed_once(monkeypatch, capsys):
    """No cost for the common case: the split runs only after the parser reported extra content."""
    from virtdoctor.commands import preflight

    calls = []
    monkeypatch.setattr(preflight, "split_documents", lambda *a: calls.append(a) or [])
    rc, doc, err = run(capsys, DATA / "import.xml")
    assert rc != 3 and calls == []

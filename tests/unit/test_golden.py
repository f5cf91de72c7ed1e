"""Golden files: the text and JSON output of `check` on a few fake hosts and of `preflight`
on real virt-install output, pinned with --only to a fixed set of checks (new checks do not
churn them) and normalised (root path, hostname, times, version).

A deliberate change of the output: regenerate with
    VIRTDOCTOR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden.py
and review the diff of tests/golden/ like code."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from virtdoctor import __version__
from virtdoctor.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
DATA = Path(__file__).resolve().parents[1] / "data" / "virt-install"
UPDATE = bool(os.environ.get("VIRTDOCTOR_UPDATE_GOLDEN"))

CHECK_ONLY = ("config-syntax-error,daemon-log-dir-missing,qemu-user-missing,kvm-device-missing,"
              "dnsmasq-missing,tls-ca-missing")
PREFLIGHT_ONLY = "schema-invalid,boot-order-conflict,disk-cache-unsafe,cdrom-on-virtio"


def bare_etc(root):
    """A copied /etc: qemu.conf names an account that is not there; no logs dir, no /dev/kvm."""
    root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\n')


def broken_conf(root):
    """libvirtd.conf with a syntax error; the log directory and QEMU's account exist."""
    root.write("/etc/libvirt/libvirtd.conf", 'listen_tls = 0\nlog_outputs = "1:file:/var/log/libvirt/libvirtd.log\n')
    root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\ngroup = "kvm"\n')
    root.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"
               "libvirt-qemu:x:64055:106:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n")
    root.write("/etc/group", "root:x:0:\nkvm:x:106:libvirt-qemu\n")
    root.mkdir("/var/log/libvirt/qemu", mode=0o700)


HOSTS = {"bare-etc": bare_etc, "broken-conf": broken_conf}


def normalise_text(text: str, root: str, name: str = "ROOT") -> str:
    return text.replace(root, name)


def normalise_doc(doc, root: str, name: str = "ROOT"):
    def walk(v):
        if isinstance(v, str):
            return v.replace(root, name)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    doc = walk(doc)
    assert doc["virtdoctor"] == __version__ and doc["target"]["hostname"] == socket.gethostname()
    doc.update(virtdoctor="VERSION", started_at="TIME", duration_s=0)
    doc["target"].update(hostname="HOST", host="HOST")
    return doc


def compare(name: str, got: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"{path} is missing: run with VIRTDOCTOR_UPDATE_GOLDEN=1"
    assert got == path.read_text(), f"{name} differs from the golden file (see the module docstring)"


def run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_check_text_and_json(fake_root, capsys, host):
    HOSTS[host](fake_root)
    root = str(fake_root)
    rc_text, text = run(capsys, ["--offline", "--root", root, "check", "--only", CHECK_ONLY])
    rc_json, out = run(capsys, ["--offline", "--root", root, "--format", "json", "check", "--only", CHECK_ONLY])
    assert rc_text == rc_json
    compare(f"check-{host}.txt", f"exit {rc_text}\n" + normalise_text(text, root))
    compare(f"check-{host}.json", json.dumps(normalise_doc(json.loads(out), root), indent=2) + "\n")


def test_preflight_text_and_json(capsys):
    here = str(DATA)
    rc_text, text = run(capsys, ["--offline", "-v", "preflight", DATA / "cdrom.xml", "--only", PREFLIGHT_ONLY])
    rc_json, out = run(capsys, ["--offline", "--format", "json", "preflight", DATA / "cdrom.xml",
                                "--only", PREFLIGHT_ONLY])
    assert rc_text == rc_json
    compare("preflight-cdrom.txt", f"exit {rc_text}\n" + normalise_text(text, here, "DATA"))
    compare("preflight-cdrom.json", json.dumps(normalise_doc(json.loads(out), here, "DATA"), indent=2) + "\n")

"""`virt-install ... --print-xml | virtdoctor preflight -` with this host's real virt-install
(Debian's virtinst): an install from a cdrom and from a --location tree writes two <domain>
documents, an --import one; preflight checks each (subjects xml:-#1, xml:-#2) against the
host, never status 3. Nothing is defined; the disk, ISO and tree are files in a temporary
directory (virt-install copies a --location kernel/initrd to /var/lib/libvirt/boot for the
printed XML: those copies are removed; it also defines a storage pool for each directory
holding a --disk or --cdrom path, named after the directory: pools it added are removed)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import pytest

import vmhelpers

pytestmark = pytest.mark.live


@pytest.fixture
def media(tmp_path):
    disk = tmp_path / "vdtest-vi.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    iso = tmp_path / "vdtest-vi.iso"
    iso.write_bytes(b"\0" * (1 << 20))
    tree = tmp_path / "tree"
    (tree / "install.amd").mkdir(parents=True)
    (tree / "install.amd" / "vmlinuz").write_bytes(b"kernel")
    (tree / "install.amd" / "initrd.gz").write_bytes(b"initrd")
    (tree / ".treeinfo").write_text("[general]\nfamily = Debian\nversion = 12\narch = x86_64\n"
                                    "[images-x86_64]\nkernel = install.amd/vmlinuz\ninitrd = install.amd/initrd.gz\n")
    before = set(glob.glob("/var/lib/libvirt/boot/virtinst-*"))
    pools_before = _pools()
    yield {"disk": str(disk), "iso": str(iso), "tree": str(tree)}
    for path in set(glob.glob("/var/lib/libvirt/boot/virtinst-*")) - before:
        os.unlink(path)
    for pool in _pools() - pools_before:
        subprocess.run(["virsh", "-q", "-c", "qemu:///system", "pool-destroy", pool], capture_output=True)
        subprocess.run(["virsh", "-q", "-c", "qemu:///system", "pool-undefine", pool], capture_output=True)
    assert _pools() == pools_before


def _pools() -> set[str]:
    out = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "pool-list", "--all", "--name"],
                         capture_output=True, text=True, timeout=30).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("kind, count", [("cdrom", 2), ("location", 2), ("import", 1)])
def test_print_xml_piped_into_preflight(media, kind, count):
    if shutil.which("virt-install") is None:
        pytest.fail("virt-install is not installed (scripts/host-setup.sh installs virtinst)")
    source = {"cdrom": ["--cdrom", media["iso"]], "location": ["--location", media["tree"]],
              "import": ["--import"]}[kind]
    proc = subprocess.run(["virt-install", "--connect", "qemu:///system", "--name", f"vdtest-vi-{kind}",
                           "--memory", "256", "--vcpus", "1", "--disk", f"path={media['disk']}", *source,
                           "--osinfo", "generic", "--network", "none", "--graphics", "none", "--print-xml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("<domain ") == count
    rc, out, err = vmhelpers.run_virtdoctor("--format", "json", "preflight", "-", input=proc.stdout)
    assert rc != 3, err
    doc = json.loads(out)
    subjects = list(dict.fromkeys(f["subject"] for f in doc["findings"]))
    assert subjects == (["xml:-"] if count == 1 else [f"xml:-#{i}" for i in range(1, count + 1)])
    assert [f["status"] for f in doc["findings"] if f["id"] == "schema-invalid"] == ["pass"] * count

"""disk-source-permission live, fixed the way virt-manager does: an image in a root-owned 0700
directory, the start fails with libvirt's own text, `virtdoctor fix --yes` grants QEMU's account
only the traversal it lacks (an ACL entry on that one directory), the guest starts; restoring the
backup the fix made puts the directory's mode and ACL back exactly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import libvirt
import pytest
import vmhelpers

NAME = "vdtest-perm-acl"
DIR = "/srv/vdtest-perm-dir"
ACL = "system.posix_acl_access"


def xattr(path):
    try:
        return os.getxattr(path, ACL)
    except OSError:
        return None


@pytest.fixture
def locked_image():
    if os.path.exists(DIR):
        shutil.rmtree(DIR)
    os.makedirs(DIR)
    os.chmod(DIR, 0o700)
    img = f"{DIR}/{NAME}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "16M"], check=True, timeout=30)
    yield img
    shutil.rmtree(DIR, ignore_errors=True)


def test_fix_grants_traversal_and_the_guest_starts(locked_image, vm_xml, define_vm, run_virtdoctor):
    if shutil.which("setfacl") is None:
        pytest.fail("setfacl (Debian package acl) is needed: scripts/host-setup.sh installs it")
    dom = define_vm(vm_xml(NAME, disk=locked_image))
    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()
    text = str(err.value)
    print(text)
    assert f"Cannot access storage file '{locked_image}'" in text and "Permission denied" in text
    before = (os.stat(DIR).st_mode, xattr(DIR))

    rc, out, _ = run_virtdoctor("--format", "json", "check", "--domain", NAME, "--only", "disk-source-permission")
    finding = next(f for f in json.loads(out)["findings"] if f["id"] == "disk-source-permission"
                   and f["status"] == "fail")
    assert finding["fix"]["auto"] == "safe"
    user = finding["evidence"]["qemu"].split(":")[0]
    assert finding["fix"]["commands"] == [f"setfacl -m u:{user}:x {DIR}"]  # that directory only, no chmod

    rc, out, err_text = run_virtdoctor("--format", "json", "fix", "--yes", "--domain", NAME,
                                       "--only", "disk-source-permission")
    print(out[-3000:], err_text)
    doc = json.loads(out)
    acts = [a for a in json.dumps(doc).split('"status": "')[1:]]
    assert any(a.startswith("fixed") for a in acts), out
    # owner and other bits unchanged (the group bits of an ACL'd directory show its mask: --x)
    assert os.stat(DIR).st_mode & 0o707 == 0o700
    assert xattr(DIR) is not None
    proof = vmhelpers.start_and_prove(vmhelpers.open_with_timeout().lookupByName(NAME))
    print(f"guest ran after the fix: {proof}")

    # the backup the fix made restores the directory exactly (what rollback and undo use)
    backup = next(v for v in _walk(doc) if isinstance(v, str) and "disk-source-permission" in v
                  and os.path.isdir(v))
    from virtdoctor import remedy

    with open(os.path.join(backup, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    entries = [e for e in manifest.get("files", []) if e["path"] == DIR]
    assert entries, manifest
    remedy.restore_path(remedy.Env(root="/"), entries[0])
    assert (os.stat(DIR).st_mode, xattr(DIR)) == before


def _walk(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)
    else:
        yield v

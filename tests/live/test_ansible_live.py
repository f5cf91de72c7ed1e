"""Live: the Ansible collection on the real host next to a fake-root host. /dev/kvm is made
0600 (QEMU's account loses KVM, as in test_kvm_live); fix.yml under --check --diff plans its
repair and changes nothing, fix.yml repairs it (0660, group kvm), a second run changes nothing,
and the report callback's fleet document names the right host per slug. The fix is limited to
kvm-device-permission on the real host (host var virtdoctor_only), so nothing else of the
host is touched; /dev/kvm and the udev rules are restored by file_guard whatever happens."""
from __future__ import annotations

import json
import os
import stat

import pytest

from tests.fleet.test_ansible import FIX_ONLY, ansible_venv, collections_path, make_roots, player, snapshot  # noqa: F401

UDEV_RULE = "/etc/udev/rules.d/65-kvm.rules"


@pytest.mark.needs_kvm
def test_fleet_with_the_real_host(tmp_path, file_guard, ansible_venv, collections_path):  # noqa: F811
    file_guard("/dev/kvm")
    file_guard(UDEV_RULE)
    file_guard("/etc/udev/rules.d")
    roots = make_roots(tmp_path / "roots")
    hosts = [f"hv-logs virtdoctor_root={roots['hv-logs']} virtdoctor_only='{json.dumps(FIX_ONLY)}'",
             'hv-real virtdoctor_only=\'["kvm-device-permission"]\'']
    play = player(tmp_path, ansible_venv, collections_path, hosts)
    os.chmod("/dev/kvm", 0o600)

    before = snapshot(roots["hv-logs"])
    dry = play("fix", "--check", "--diff")
    out = dry.stdout + dry.stderr
    assert stat.S_IMODE(os.stat("/dev/kvm").st_mode) == 0o600, out  # check mode changed nothing
    assert snapshot(roots["hv-logs"]) == before
    assert dry.recap["hv-real"]["changed"] >= 1 and dry.recap["hv-real"]["failed"] == 0, out
    assert [a["id"] for a in dry.fleet["hosts"]["hv-real"]["fix"] if a["status"] == "planned"] == \
        ["kvm-device-permission"]
    assert "# kvm-device-permission host:" in out  # --diff shows the plan

    real = play("fix")
    out = real.stdout + real.stderr
    assert real.recap["hv-real"]["changed"] >= 1 and real.recap["hv-real"]["failed"] == 0, out
    st = os.stat("/dev/kvm")
    assert st.st_mode & 0o060 == 0o060  # QEMU's group can open it again
    assert real.fleet["hosts"]["hv-real"]["failing"] == []
    assert real.fleet["hosts"]["hv-real"]["target"]["root"] == "/"
    assert real.fleet["failing"]["kvm-device-missing"] == ["hv-logs"]
    assert "daemon-log-dir-missing" not in real.fleet["failing"]

    again = play("fix")
    assert again.recap["hv-real"]["changed"] == 0 and again.recap["hv-logs"]["changed"] == 0, again.stdout
    assert again.recap["hv-real"]["failed"] == 0

"""The knowledge entries of slugs whose checks attach a plan say the same commands as the
plan: on a representative fake host per slug, every command of the plan is listed in
knowledge/SLUG.toml (which may add variants for other hosts, e.g. systemd)."""
from __future__ import annotations

from pathlib import Path

import pytest

from virtdoctor import engine
from virtdoctor.checks import daemon, kvm, platform
from virtdoctor.facts import HostFacts
from virtdoctor.facts.kvm import KvmProbe
from virtdoctor.facts.libvirt import RecordedLibvirt
from virtdoctor.knowledge import load

REPO = Path(__file__).resolve().parents[2]


def accounts(root):
    root.passwd([("root", 0, 0), ("libvirt-qemu", 64055, 64055)])
    root.group([("root", 0), ("kvm", 107, ["libvirt-qemu"]), ("libvirt-qemu", 64055)])
    root.mkdir("/etc/libvirt")


def kvm_permission(root):
    accounts(root)
    root.write("/dev/kvm", "", mode=0o600)  # root:root 0600, no udev rule
    return kvm.kvm_device_permission


def log_dirs(root):
    accounts(root)
    root.mkdir("/var/log")
    return daemon.daemon_log_dir_missing


def socket_missing(root):
    accounts(root)
    root.mkdir("/var/log/libvirt/qemu")
    for name in ("libvirtd", "virtlogd"):
        root.write(f"/usr/sbin/{name}", "#!/bin/sh\n", mode=0o755)
    return daemon.daemon_socket_missing


def module(name):
    def make(root):
        accounts(root)
        release = "6.1.0-vdtest"
        root.write("/proc/sys/kernel/osrelease", release + "\n")
        root.write("/proc/modules", "kvm 1 0 - Live 0x0\n")
        mod = "drivers/net/tun.ko" if name == "tun" else "drivers/vhost/vhost_net.ko"
        root.write(f"/lib/modules/{release}/modules.dep", f"kernel/{mod}:\n")
        return platform.tun_missing if name == "tun" else platform.vhost_net_missing

    return make


CASES = {"kvm-device-permission": kvm_permission, "daemon-log-dir-missing": log_dirs,
         "daemon-socket-missing": socket_missing, "tun-missing": module("tun"),
         "vhost-net-missing": module("vhost_net")}


@pytest.mark.parametrize("slug", sorted(CASES))
def test_knowledge_commands_agree_with_the_plan(slug, fake_root):
    chk = CASES[slug](fake_root)
    facts = HostFacts(root=str(fake_root), uri="qemu:///system", processes_override=[],
                      kvm=KvmProbe("/dev/kvm", opened=True, api_version=12, vm_created=True),
                      libvirt_facts=RecordedLibvirt())
    (f,) = engine.run_check(chk, facts)
    assert f.status.value == "fail" and f.plan is not None and f.plan.actions, f.message
    entry = load([REPO / "knowledge"]).get(slug)
    missing = [c for c in f.plan.commands if c not in entry.commands]
    assert not missing, f"knowledge/{slug}.toml lacks the plan's commands: {missing}"

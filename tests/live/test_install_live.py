"""libvirt-not-installed live: this host with its libvirt hidden, in a private mount and pid
namespace (unshare), so the real daemon, its files and every other process are untouched and
nothing needs restoring afterwards: the daemon binaries are covered by an empty non-executable
file (bind mount), /run/libvirt by an empty tmpfs, and /proc shows only the namespace's own
processes. virtdoctor then sees this Debian 12 machine as a fresh host: it plans Debian's
packages, every check that needs libvirt skips with one reason, the KVM checks still run."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from virtdoctor.facts.install import NOT_INSTALLED

DAEMONS = ("/usr/sbin/libvirtd", "/usr/sbin/virtqemud")


def hidden_libvirt(tmp_path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `python -m virtdoctor ARGS` in a namespace where libvirt is not installed."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to hide libvirt in a private namespace")
    empty = tmp_path / "vdtest-empty"
    empty.write_bytes(b"")
    empty.chmod(0o644)
    mounts = [f"mount --bind {shlex.quote(str(empty))} {d}" for d in DAEMONS if os.path.exists(d)]
    mounts.append("mount -t tmpfs vdtest-run /run/libvirt")
    cmd = " && ".join([*mounts, shlex.join([sys.executable, "-m", "virtdoctor", *args])])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                           "sh", "-c", cmd], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LIBVIRT_DEFAULT_URI": "qemu:///system"})


def test_fresh_host_plans_debians_packages_and_still_judges_kvm(tmp_path):
    proc = hidden_libvirt(tmp_path, "--format", "json", "check")
    assert proc.returncode in (1, 2), proc.stderr
    doc = json.loads(proc.stdout)
    host = {f["id"]: f for f in doc["findings"] if f["subject"] == "host"}
    f = host["libvirt-not-installed"]
    print(f["message"])
    assert f["status"] == "fail" and f["fix"]["auto"] == "unsafe"
    assert "libvirt is not installed on Debian GNU/Linux 12 (bookworm)" in f["message"]
    assert "present: the client /usr/bin/virsh" in f["message"]  # virsh and /etc/libvirt stay visible
    assert "apt-get install -y libvirt-daemon-system libvirt-clients qemu-system-x86 ovmf" in f["fix"]["commands"]
    # whether KVM works here, from the real /dev/kvm probe
    assert "KVM works here" in f["message"] or "/dev/kvm" in f["message"]
    # the daemon is not judged (no "Start libvirtd"): one reason, no advice of its own
    for slug in ("daemon-socket-missing", "daemon-log-dir-missing", "qemu-user-missing", "config-syntax-error",
                 "tls-server-cert-missing", "tcp-listen-disabled", "kvm-device-permission", "dnsmasq-missing",
                 "default-network-inactive", "qemu-emulator-missing"):
        assert host[slug]["status"] == "skip" and host[slug]["message"] == NOT_INSTALLED, (slug, host[slug])
        assert host[slug]["fix"] is None
    # KVM readiness still judged
    for slug in ("kvm-device-missing", "kvm-hw-virt-missing"):
        assert host[slug]["message"] != NOT_INSTALLED and host[slug]["status"] in ("pass", "fail", "skip")
        assert "libvirt" not in host[slug]["message"]
    # and the real daemon outside the namespace still answers: nothing was changed
    assert subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                          timeout=30).returncode == 0


def test_fix_plan_is_unsafe_and_not_applied_without_unsafe(tmp_path):
    proc = hidden_libvirt(tmp_path, "--format", "json", "fix", "--yes", "--only", "libvirt-not-installed")
    doc = json.loads(proc.stdout)
    print(proc.stdout[-2000:])
    text = json.dumps(doc)
    assert "libvirt-daemon-system" in text
    assert '"applied": true' not in text  # --unsafe was not given: apt-get never ran


def test_shell_texts_of_a_missing_client_map_to_the_slug(tmp_path, run_virtdoctor):
    nowhere = tmp_path / "vdtest-empty-path"
    nowhere.mkdir()
    texts = []
    for shell in ("/bin/bash", "/bin/sh"):
        p = subprocess.run([shell, "-c", "virsh list"], capture_output=True, text=True,
                           env={"PATH": str(nowhere)}, timeout=10)
        assert p.returncode == 127
        texts.append(p.stderr.strip())
    print(texts)  # "/bin/bash: line 1: virsh: command not found", "/bin/sh: 1: virsh: not found"
    for text in texts:
        rc, out, err = run_virtdoctor("--format", "json", "explain", text)
        assert json.loads(out)["matches"][0]["id"] == "libvirt-not-installed", (text, out, err)

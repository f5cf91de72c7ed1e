"""A fresh host: is libvirt installed at all, and what to install on this
distribution. Checks that only make sense once libvirt exists declare the need
`libvirt-installed`; the engine skips them with one reason pointing here, while the
KVM readiness checks (/dev/kvm, hardware virtualisation) still run, so the report
answers both "can this machine run KVM guests" and "what do I install"."""
from __future__ import annotations

from virtdoctor.api import Auto, FactUnavailable, Fail, Pass, RunCommand, Skip, check, hookimpl, plan


def kvm_verdict(facts) -> str:
    """One sentence: will KVM guests work here once libvirt is installed."""
    if not facts.exists("/dev/kvm"):
        return ("no /dev/kvm: guests would run under TCG emulation, many times slower "
                "(kvm-device-missing and kvm-hw-virt-missing say why)")
    try:
        probe = facts.kvm_probe()
    except FactUnavailable as exc:
        return f"/dev/kvm exists; not probed ({exc})"
    if probe.usable:
        return "KVM works here: /dev/kvm answers and creates a VM"
    return f"/dev/kvm exists but does not work ({probe.error}): kvm-hw-virt-missing says why"


@check("libvirt-not-installed", scope="host", area="install", severity="error",
       title="libvirt and QEMU are installed", plans=True)
def libvirt_not_installed(facts):
    """Looks at the libvirt daemon binaries (libvirtd, virtqemud in the usual bin
    directories), virsh, /etc/libvirt, the QEMU system emulators and /etc/os-release.
    Why: on a fresh host nothing else can work and "start the daemon" is not the fix;
    the report says what to install on this distribution and whether KVM works here.
    The checks that need libvirt skip with one reason pointing here.
    Fix safety: unsafe (installs software): the distribution's own packages
    (Debian/Ubuntu apt, Fedora/RHEL/CentOS Stream dnf, Arch pacman, openSUSE zypper),
    then the daemon is started."""
    inst = facts.installation
    evidence = dict(inst.evidence)
    verdict = kvm_verdict(facts)
    evidence["kvm"] = verdict
    if inst.unknown:
        return Skip("this root is not a whole system (no /etc/os-release, or no /usr/bin and /usr/sbin: "
                    "a copied /etc?): cannot tell whether libvirt is installed", evidence)
    if inst.libvirt_installed:
        qemu = (f"; QEMU: {', '.join(inst.emulators)}" if inst.qemu_installed
                else "; no QEMU system emulator found (qemu-emulator-missing)")
        return Pass(f"libvirt is installed ({', '.join(inst.daemons)}){qemu}", evidence)
    found = []
    if inst.client:
        found.append(f"the client {inst.client}")
    if inst.etc_libvirt:
        found.append("/etc/libvirt (left by a removed package?)")
    if inst.emulators:
        found.append(f"QEMU ({', '.join(inst.emulators)})")
    have = f"; present: {', '.join(found)}" if found else "; no QEMU emulator either"
    message = (f"libvirt is not installed on {inst.os.name}: no libvirt daemon (libvirtd, virtqemud){have}. "
               f"{verdict}")
    p = inst.plan()
    if p is None:
        return Fail(message, evidence, plan=plan(
            f"Install libvirt and QEMU with the packages of {inst.os.name}", Auto.MANUAL,
            notes=["this distribution is not one virtdoctor knows the packages of (Debian/Ubuntu, "
                   "Fedora/RHEL/CentOS Stream, Arch, openSUSE): install its libvirt daemon, client "
                   "and QEMU system emulator packages, then start the daemon", verdict]))
    evidence["packages"] = list(p.packages)
    actions = []
    if p.family == "debian":
        actions.append(RunCommand(["apt-get", "update"], "refresh the package lists"))
    actions.append(RunCommand(list(p.install), f"install {' '.join(p.packages)}"))
    actions.extend(RunCommand(list(argv), "start the libvirt daemon") for argv in p.start)
    return Fail(message, evidence, plan=plan(
        f"Install {' '.join(p.packages)} ({inst.os.name}) and start the daemon", Auto.UNSAFE, *actions,
        notes=[*p.notes, verdict]))


@hookimpl
def virtdoctor_checks():
    return [libvirt_not_installed]

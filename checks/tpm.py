"""Emulated TPMs (swtpm): the tools on the daemon's PATH, and the per-domain
state directory and configuration swtpm_setup needs.

Facts: `facts.devices` (the daemon's PATH from /proc/PID/environ, the swtpm
tools, qemu.conf swtpm_user/swtpm_group, state and log paths)."""
from __future__ import annotations

from virtdoctor.api import Auto, FactUnavailable, Fail, Pass, RunCommand, Skip, check, hookimpl, plan

SETUP_CONFS = ("/etc/swtpm_setup.conf", "/etc/swtpm-localca.conf")
LOG_ERRORS = ("swtpm_setup: ", "Error", "error", "Permission denied", "Could not", "failed", "Failed")


def _emulated_tpms(root) -> list:
    return [t for t in root.iterfind("devices/tpm")
            if t.find("backend") is not None and t.find("backend").get("type") == "emulator"]


def _missing_tools(facts) -> list[str]:
    return [t for t, path in facts.devices.swtpm_tools.items() if path is None]


def _install_plan(missing):
    return plan("Install swtpm and swtpm-tools", Auto.MANUAL,
                RunCommand(["apt-get", "install", "-y", "swtpm", "swtpm-tools"]),
                notes=[f"missing on the daemon's PATH: {', '.join(missing)}"])


@check("swtpm-missing", scope="domain", area="tpm", severity="error",
       title="swtpm, swtpm_setup and swtpm_ioctl are on the daemon's PATH", plans=True)
def swtpm_missing(facts, dom):
    """Looks at <tpm><backend type='emulator'> and looks up swtpm, swtpm_setup
    and swtpm_ioctl on the running daemon's PATH (/proc/PID/environ of
    virtqemud or libvirtd).
    Why: the start fails with "Unable to find 'swtpm' binary in $PATH: No such
    file or directory" (or swtpm_setup, swtpm_ioctl).
    Fix safety: manual (installs packages): apt-get install swtpm swtpm-tools."""
    if not _emulated_tpms(dom.root):
        return Pass("no emulated TPM")
    missing = _missing_tools(facts)
    path, source = facts.devices.daemon_path
    ev = {"tools": facts.devices.swtpm_tools, "path": path, "path_from": source}
    if not missing:
        return Pass(f"swtpm tools found on the PATH of {source}", ev)
    # seen live (9.0.0): without swtpm the capabilities drop TPM 2.0 and define/start fail with
    # "TPM version '2.0' is not supported"; a missing helper tool gives "Unable to find ..."
    text = ("unsupported configuration: TPM version '2.0' is not supported" if "swtpm" in missing
            else f"Unable to find '{missing[0]}' binary in $PATH: No such file or directory")
    return Fail(f"{', '.join(missing)} not on the PATH of {source}: the define or start fails with \"{text}\"",
                ev, plan=_install_plan(missing))


@check("swtpm-missing", scope="host", area="tpm", severity="error",
       title="Domains with an emulated TPM find the swtpm tools", needs=("libvirt",), plans=True)
def swtpm_missing_host(facts):
    """Looks at the defined domains with <tpm><backend type='emulator'> and
    the swtpm tools on the daemon's PATH (see the domain check).
    Why: every such domain fails to start without them.
    Fix safety: manual (installs packages)."""
    users = [d for d in facts.devices.tpm_domains]
    if not users:
        return Pass("no domain with an emulated TPM")
    missing = _missing_tools(facts)
    if not missing:
        return Pass(f"swtpm tools present for {', '.join(users)}")
    return Fail(f"{', '.join(missing)} missing on the daemon's PATH: domain(s) {', '.join(users)} cannot start",
                {"domains": users, "missing": missing}, plan=_install_plan(missing))


@check("swtpm-setup-failed", scope="domain", area="tpm", severity="error",
       title="The TPM state directory and swtpm_setup's configuration are usable", plans=True)
def swtpm_setup_failed(facts, dom):
    """Looks at a domain with an emulated TPM: /var/lib/libvirt/swtpm/UUID
    (and its tpm2/) owned by qemu.conf's swtpm_user:swtpm_group (default
    tss:tss), /etc/swtpm_setup.conf and /etc/swtpm-localca.conf present, and
    the last lines of /var/log/swtpm/libvirt/qemu/NAME-swtpm.log.
    Why: the start fails with "Could not run '/usr/bin/swtpm_setup'.
    exitstatus: 1; Check error log ..." or "swtpm died unexpectedly".
    Fix safety: safe: chown the state directory back to swtpm_user:group (the
    TPM's keys are kept); recreating the state is never automatic."""
    if not _emulated_tpms(dom.root):
        return Pass("no emulated TPM")
    if _missing_tools(facts):
        return Skip("swtpm tools missing: swtpm-missing reports it")
    uuid = (dom.root.findtext("uuid") or "").strip()
    user, group = facts.devices.swtpm_account()
    acct = facts.account(user)
    grp = facts.group(group)
    problems, actions, notes = [], [], []
    ev = {"swtpm_user": user, "swtpm_group": group}
    if acct is None:
        problems.append(f"qemu.conf's swtpm_user {user!r} does not exist")
    for conf in SETUP_CONFS:
        if not facts.exists(conf):
            problems.append(f"{conf} is missing (swtpm-tools ships it)")
            notes.append("apt-get install --reinstall swtpm-tools   # restores " + conf)
    if uuid:
        state = facts.devices.swtpm_state_dir(uuid)
        ev["state_dir"] = state
        wrong = []
        for path in (state, f"{state}/tpm2"):
            st = facts.stat(path)
            if st is None:
                continue
            if acct is not None and st.uid != acct.uid or (grp is not None and st.gid != grp.gid):
                wrong.append(f"{path} is {st.owner}:{st.group}")
        if wrong:
            problems.append(f"{'; '.join(wrong)}, not {user}:{group}")
            actions.append(RunCommand(["chown", "-R", f"{user}:{group}", state]))
    log = facts.devices.swtpm_log(dom.name or "")
    try:
        tail = facts.read_tail(log, 8192)
    except FactUnavailable:
        tail = None
    last = [l for l in (tail or "").splitlines() if l.strip()][-3:]
    if last and problems:
        ev["log"] = last
    if not problems:
        return Pass("TPM state and swtpm_setup configuration look usable", ev)
    msg = "; ".join(problems) + (f" (log {log}: {last[-1]})" if last else "")
    auto = Auto.SAFE if actions and not notes and acct is not None else Auto.MANUAL
    notes.append("never delete the TPM state to 'fix' it: BitLocker and measured-boot keys live there")
    return Fail(msg, ev, plan=plan(f"Make the TPM state of {dom.name} usable by {user}:{group}", auto, *actions,
                                   notes=notes))


@hookimpl
def virtdoctor_checks():
    return [swtpm_missing_host, swtpm_missing, swtpm_setup_failed]

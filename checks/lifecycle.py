"""Running guests: kernel panics (state crashed/panicked, <panic>, <on_crash>), a domain job lock
held by a stuck QEMU, the guest agent channel and its connection, and the serial console."""
from __future__ import annotations

from virtdoctor.api import (Auto, Fail, Pass, RunCommand, Skip, Warn, append_child, check, ensure_child, fragment,
                            hookimpl, plan,
                            redefine_plan)

AGENT = "org.qemu.guest_agent.0"
CRASHED, PAUSED, SHUTOFF = 6, 3, 5
PANICKED_REASON, SHUTOFF_CRASHED = 1, 3


def _live(dom):
    """The live XML of a running domain (an lxml element), or None."""
    if dom.info is None or not dom.info.active or not dom.info.live_xml:
        return None
    try:
        return fragment(dom.info.live_xml)
    except Exception:
        return None


# -- guest-panicked -----------------------------------------------------------------------------
@check("guest-panicked", scope="domain", area="lifecycle", severity="error", plans=True,
       title="The guest kernel has not panicked")
def guest_panicked(facts, dom):
    """Looks at the domain's state and reason (crashed/panicked; shut off/crashed), its
    <panic> device and <on_crash> action.
    Why: a guest kernel panic stops (or, with on_crash restart, loops) the VM; without a
    <panic> device libvirt cannot see panics at all.
    Fix: manual for the guest; <on_crash>coredump-restart</on_crash> with qemu.conf
    auto_dump_path collects evidence. Adding a <panic> device is unsafe (guest-visible)."""
    info = dom.info
    panic = dom.tree.find("devices/panic")
    on_crash = (dom.tree.findtext("on_crash") or "destroy").strip()
    evidence = {"panic_device": panic.get("model") if panic is not None else None, "on_crash": on_crash}
    if info is None:
        return Pass("not a defined domain: no state to judge")
    evidence.update(state=info.state_name, reason=info.reason_name)
    name = dom.name
    if info.state == CRASHED:
        return Fail(f"the guest kernel panicked: {name} is crashed ({info.reason_name}) and kept for inspection "
                    f"(on_crash {on_crash})", evidence,
                    plan=plan("Collect the crash evidence, then restart the guest", Auto.MANUAL,
                              RunCommand(["virsh", "dump", "--memory-only", name, f"/var/tmp/{name}.core"],
                                         "save the guest's memory for crash analysis"),
                              RunCommand(["virsh", "destroy", name]), RunCommand(["virsh", "start", name]),
                              notes=[f"read the guest's console log: /var/log/libvirt/qemu/{name}.log and the serial log",
                                     "<on_crash>coredump-restart</on_crash> plus auto_dump_path in qemu.conf collects "
                                     "dumps automatically"]))
    if info.state == SHUTOFF and info.reason == SHUTOFF_CRASHED and panic is not None:
        return Fail(f"{name} is shut off (crashed): with its <panic model='{panic.get('model') or 'default'}'> device "
                    f"and on_crash {on_crash} this is a guest kernel panic (or QEMU died)", evidence,
                    plan=plan("Keep the next panic for inspection", Auto.MANUAL,
                              notes=[f"set <on_crash>preserve</on_crash> (or coredump-restart with auto_dump_path) in "
                                     f"{name}'s XML: virsh edit {name}", f"then: virsh start {name}"]))
    if panic is None and info.active and dom.virt_type in ("kvm", "qemu"):
        def edit(copy):
            append_child(ensure_child(copy.root, "devices"), fragment("<panic model='isa'/>"))
            return "Add a <panic model='isa'/> device so libvirt sees guest panics"
        return Warn(f"{name} has no <panic> device: a guest kernel panic looks like a hung guest to libvirt", evidence,
                    plan=redefine_plan(dom, edit, auto=Auto.UNSAFE))
    return Pass(f"{name} is {info.state_name} ({info.reason_name})", evidence)


# -- state-change-lock-timeout ----------------------------------------------------------------
def _qemu_proc(facts, dom):
    for p in facts.processes:
        if p.name.startswith("qemu-system") or p.name.startswith("qemu-kvm"):
            if any(a in (f"guest={dom.name},debug-threads=on", f"guest={dom.name}") or a.startswith(f"guest={dom.name},")
                   for a in p.cmdline):
                return p
    return None


@check("state-change-lock-timeout", scope="domain", area="lifecycle", severity="error", plans=True,
       title="The domain's QEMU answers (no stuck job lock)")
def state_change_lock_timeout(facts, dom):
    """For a running domain: its QEMU process state in /proc/PID/stat (D = uninterruptible
    I/O, T = stopped) and wait channel.
    Why: a QEMU stuck in I/O (dead NFS, storage) or stopped holds the domain's job lock; every
    other API call waits 30 s and fails with "Timed out during operation: cannot acquire state
    change lock (held by monitor=...)".
    Fix: manual; fix the storage, virsh domjobabort, as a last resort virsh destroy."""
    if dom.info is None or not dom.info.active:
        return Pass("the domain is not running")
    proc = _qemu_proc(facts, dom)
    if proc is None:
        return Skip("the domain's QEMU process is not visible here")
    try:
        stat = facts.read_text(f"/proc/{proc.pid}/stat") or ""
        wchan = (facts.read_text(f"/proc/{proc.pid}/wchan") or "").strip()
    except Exception as exc:
        return Skip(f"cannot read QEMU's /proc entry: {exc}")
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    evidence = {"pid": proc.pid, "state": state, "wchan": wchan}
    if state not in ("D", "T", "t"):
        return Pass(f"QEMU (pid {proc.pid}) is in state {state}", evidence)
    what = "in uninterruptible I/O (D)" if state == "D" else "stopped (SIGSTOP or a tracer)"
    steps = [RunCommand(["virsh", "domjobinfo", dom.name], "which job holds the lock")]
    if state != "D":
        steps.append(RunCommand(["kill", "-CONT", str(proc.pid)], "let QEMU run again"))
    steps += [RunCommand(["virsh", "domjobabort", dom.name])]
    return Fail(f"QEMU of {dom.name} (pid {proc.pid}) is {what}" + (f", waiting in {wchan}" if wchan and wchan != "0" else "")
                + ": API calls on the domain time out (\"cannot acquire state change lock\")", evidence,
                plan=plan("Find and end what holds the domain's job", Auto.MANUAL, *steps,
                          notes=["a D state usually means lost storage: check NFS/iSCSI mounts in /proc/mounts",
                                 f"last resort: virsh destroy {dom.name}"]))


# -- guest-agent-unavailable -------------------------------------------------------------------
def _agent_channel(tree):
    for ch in tree.iterfind("devices/channel"):
        t = ch.find("target")
        if t is not None and t.get("name") == AGENT:
            return ch
    return None


@check("guest-agent-unavailable", scope="domain", area="lifecycle", severity="warning", plans=True,
       title="The guest agent channel is configured and connected")
def guest_agent_unavailable(facts, dom):
    """Looks at the org.qemu.guest_agent.0 channel in the domain XML and, for a running
    domain, its live target state (connected/disconnected).
    Why: without it `domifaddr --source agent`, `domfsfreeze`, quiesced snapshots, `shutdown
    --mode agent`, `set-user-password` and `guestinfo` fail ("QEMU guest agent is not
    configured" / "... is not connected").
    Fix: unsafe (a new guest device) to add the channel; installing and starting qemu-guest-agent
    in the guest is manual."""
    ch = _agent_channel(dom.tree)
    if ch is None:
        def edit(copy):
            append_child(ensure_child(copy.root, "devices"), fragment(
                f"<channel type='unix'><target type='virtio' name='{AGENT}'/></channel>"))
            return "Add the qemu-guest-agent channel (org.qemu.guest_agent.0)"
        return Fail("the domain has no org.qemu.guest_agent.0 channel: agent features fail with \"QEMU guest agent is "
                    "not configured\"", {"channel": None},
                    plan=redefine_plan(dom, edit, auto=Auto.UNSAFE,
                                       notes=["then install and start qemu-guest-agent in the guest"]))
    live = _live(dom)
    if live is None:
        return Pass("the agent channel is configured", {"channel": "configured"})
    lch = _agent_channel(live)
    state = lch.find("target").get("state") if lch is not None else None
    evidence = {"channel": "configured", "state": state}
    if state == "disconnected":
        return Fail("the agent channel exists but no agent is connected: \"QEMU guest agent is not connected\"; "
                    "qemu-guest-agent is not installed or not running in the guest", evidence,
                    plan=plan("Install and start the agent in the guest", Auto.MANUAL,
                              notes=["Debian/Ubuntu guests: apt-get install qemu-guest-agent; systemctl start "
                                     "qemu-guest-agent", "Fedora/RHEL: dnf install qemu-guest-agent",
                                     "Windows: the virtio-win guest tools"]))
    return Pass(f"the guest agent channel is {state or 'configured'}", evidence)


# -- console-unavailable -----------------------------------------------------------------------
@check("console-unavailable", scope="domain", area="lifecycle", severity="warning", plans=True,
       title="virsh console has a pty serial console to attach to")
def console_unavailable(facts, dom):
    """Looks at /domain/devices/serial and console (type pty), and for direct kernel boots the
    <cmdline> for console=ttyS0.
    Why: `virsh console` fails without such a device ("cannot find character device <null>",
    "character device ... is not using a PTY"), or shows nothing when the guest does not log to
    the serial port.
    Fix: unsafe (guest-visible); add <serial type='pty'/> and <console type='pty'/>.
    `virsh console --force` takes over another session (manual)."""
    serials = dom.tree.findall("devices/serial")
    consoles = dom.tree.findall("devices/console")
    evidence = {"serial": [s.get("type") for s in serials], "console": [c.get("type") for c in consoles]}
    if not serials and not consoles:
        def edit(copy):
            devs = ensure_child(copy.root, "devices")
            append_child(devs, fragment("<serial type='pty'><target port='0'/></serial>"))
            append_child(devs, fragment("<console type='pty'><target type='serial' port='0'/></console>"))
            return "Add a pty serial port and console"
        return Fail("the domain has no serial or console device: virsh console fails with \"cannot find character "
                    "device <null>\"", evidence, plan=redefine_plan(dom, edit, auto=Auto.UNSAFE,
                                                                   notes=["Linux guests also need console=ttyS0"]))
    first = (consoles or serials)[0]
    if first.get("type") != "pty":
        return Fail(f"the first console is type '{first.get('type')}', not pty: virsh console fails with \"character "
                    "device ... is not using a PTY\"", evidence,
                    plan=plan("Make the console a pty (or read the file/socket it writes to)", Auto.MANUAL,
                              notes=[f"virsh edit {dom.name}: <serial type='pty'/> and <console type='pty'/>"]))
    cmdline = dom.tree.findtext("os/cmdline")
    if dom.tree.findtext("os/kernel") and cmdline is not None and "console=ttyS" not in cmdline:
        evidence["cmdline"] = cmdline
        return Warn("direct kernel boot without console=ttyS0 on the command line: virsh console connects but the "
                    "kernel prints nothing there", evidence,
                    plan=plan("Add console=ttyS0 to <cmdline>", Auto.MANUAL, notes=[f"virsh edit {dom.name}"]))
    return Pass(f"{first.tag} type pty: virsh console can attach", evidence)


@hookimpl
def virtdoctor_checks():
    return [guest_panicked, state_change_lock_timeout, guest_agent_unavailable, console_unavailable]

"""qemu:///session: what the unprivileged daemon cannot do by itself. Bridged
and network NICs go through the setuid or capability helper
qemu-bridge-helper, which needs privilege and /etc/qemu/bridge.conf.

Facts: `facts.netstate.bridge_helper` (mode, security.capability xattr,
bridge.conf with its includes), `facts.virtnets` (a network's bridge)."""
from __future__ import annotations

from virtdoctor.api import Auto, FactUnavailable, Fail, Pass, RunCommand, check, hookimpl, plan

HELPER = "/usr/lib/qemu/qemu-bridge-helper"


@check("session-bridge-helper", scope="domain", area="network", severity="error",
       title="Session guests on bridges can use qemu-bridge-helper", plans=True)
def session_bridge_helper(facts, dom):
    """Looks, on a qemu:///session connection, at NICs of type 'bridge' (and
    'network', through the network's bridge): qemu-bridge-helper (qemu.conf
    bridge_helper, Debian's /usr/lib/qemu/qemu-bridge-helper) is setuid root
    or has cap_net_admin in its security.capability xattr, and
    /etc/qemu/bridge.conf (includes followed) allows each bridge.
    Why: else the start fails: "... failed to communicate with bridge helper:
    stderr=failed to parse default acl file `/etc/qemu/bridge.conf'", "access
    denied by acl file" or "failed to create tun device: Operation not
    permitted". Debian 12 ships the helper with neither.
    Fix safety: manual (grants privilege to every local user): the exact
    setcap and bridge.conf lines."""
    uri = facts.resolved_uri
    if "/session" not in uri:
        return Pass(f"{uri} is not a session connection")
    bridges = []
    nets = None
    for iface in dom.root.iterfind("devices/interface"):
        src = iface.find("source")
        if src is None:
            continue
        if iface.get("type") == "bridge" and src.get("bridge"):
            bridges.append(src.get("bridge"))
        elif iface.get("type") == "network" and src.get("network"):
            if nets is None:
                try:
                    nets = {n.name: n for n in facts.virtnets.networks}
                except FactUnavailable:
                    nets = {}
            net = nets.get(src.get("network"))
            bridges.append(net.bridge if net is not None and net.bridge else
                           ("virbr0" if src.get("network") == "default" else src.get("network")))
    if not bridges:
        return Pass("no bridged or network NIC")
    path = str(facts.conf_value("/etc/libvirt/qemu.conf", "bridge_helper", HELPER))
    helper = facts.netstate.bridge_helper(path)
    problems, notes, actions = [], [], []
    ev = {"helper": path, "setuid": helper.setuid_root, "cap_net_admin": helper.cap_net_admin,
          "acl_file": helper.acl_file, "allowed": list(helper.allowed), "bridges": bridges}
    if not helper.exists:
        problems.append(f"{path} does not exist")
        actions.append(RunCommand(["apt-get", "install", "-y", "qemu-system-common"]))
    elif not helper.privileged:
        problems.append(f"{path} is neither setuid root nor cap_net_admin: \"failed to create tun device: "
                        "Operation not permitted\"")
        actions.append(RunCommand(["setcap", "cap_net_admin+ep", path]))
    if not helper.acl_exists:
        problems.append(f"{helper.acl_file} is missing: \"failed to parse default acl file `{helper.acl_file}'\"")
        actions.append(RunCommand(["mkdir", "-p", "/etc/qemu"]))
    for br in dict.fromkeys(bridges):
        if not helper.allows(br):
            if helper.acl_exists:
                problems.append(f"{helper.acl_file} does not allow {br}: \"access denied by acl file\"")
            actions.append(RunCommand(["sh", "-c", f"echo 'allow {br}' >> {helper.acl_file}"]))
    if not problems:
        return Pass(f"bridge helper usable for {', '.join(dict.fromkeys(bridges))}", ev)
    if not helper.acl_exists:
        actions.append(RunCommand(["chmod", "0644", helper.acl_file]))
    notes.append("or use qemu:///system, or user-mode networking (<interface type='user'>)")
    return Fail("session NIC(s) on " + ", ".join(dict.fromkeys(bridges)) + " need qemu-bridge-helper: "
                + "; ".join(problems), ev,
                plan=plan("Let qemu-bridge-helper attach session guests to " + ", ".join(dict.fromkeys(bridges)),
                          Auto.MANUAL, *actions, notes=notes))


@check("session-bridge-helper", scope="uri", area="network", severity="error",
       title="Session guests on bridges can use qemu-bridge-helper", needs=("libvirt",), plans=True)
def session_bridge_helper_uri(facts):
    """Looks, on a qemu:///session connection, at every defined domain's
    bridged and network NICs (the domain check, over all).
    Why: each of them fails to start without a privileged helper and a
    bridge.conf allowing the bridge.
    Fix safety: manual (grants privilege)."""
    uri = facts.resolved_uri
    if "/session" not in uri:
        return Pass(f"{uri} is not a session connection")
    failing = []
    for dom in facts.domains:
        r = session_bridge_helper.func(facts, dom)
        if r.status.value == "fail":
            failing.append((dom.name, r))
    if not failing:
        return Pass("no session domain needs the bridge helper, or it is usable")
    name, first = failing[0]
    more = f" (also: {', '.join(n for n, _ in failing[1:])})" if failing[1:] else ""
    return Fail(f"domain {name}: {first.message}{more}", {"domains": [n for n, _ in failing]}, plan=first.plan)


@hookimpl
def virtdoctor_checks():
    return [session_bridge_helper_uri, session_bridge_helper]

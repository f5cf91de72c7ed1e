"""Graphics consoles against the host: fixed VNC/SPICE ports held by another
domain or process, and listen addresses this host does not have.

Facts: `facts.devices.display_ports` (every defined domain's fixed ports),
`facts.netstate` (listening sockets and their owners, local addresses)."""
from __future__ import annotations

import ipaddress

from virtdoctor.api import Auto, FactUnavailable, Fail, Pass, RunCommand, check, hookimpl, plan, redefine_plan

QEMU_CONF = "/etc/libvirt/qemu.conf"


def _fixed_ports(root) -> list[tuple[object, str, int]]:
    """(graphics element, attribute, port) of the domain's fixed ports."""
    out = []
    for g in root.iterfind("devices/graphics"):
        if g.get("type") not in ("vnc", "spice"):
            continue
        auto = g.get("autoport")
        for attr in ("port", "tlsPort", "websocket"):
            try:
                value = int(g.get(attr) or "0")
            except ValueError:
                continue
            if value > 0 and (auto == "no" or (auto is None and attr != "websocket")):
                out.append((g, attr, value))
    return out


def _owned_by_domain(owner, name: str) -> bool:
    """A QEMU process of domain `name` (-name guest=NAME,...)."""
    args = list(owner.cmdline)
    for i, a in enumerate(args[:-1]):
        if a == "-name" and (args[i + 1] == name or args[i + 1].startswith(f"guest={name},")
                             or args[i + 1] == f"guest={name}"):
            return True
    return False


def _use_autoport(d):
    for g in d.root.iterfind("devices/graphics"):
        if g.get("type") in ("vnc", "spice") and g.get("autoport") != "yes" and \
                any((g.get(a) or "0").lstrip("-").isdigit() and int(g.get(a) or "0") > 0 for a in ("port", "tlsPort")):
            for a in ("port", "tlsPort"):
                if a in g.attrib:
                    del g.attrib[a]
            g.set("autoport", "yes")
    return "Let libvirt pick a free display port (autoport='yes')"


@check("graphics-port-conflict", scope="domain", area="graphics", severity="error",
       title="The domain's fixed VNC/SPICE ports are free", plans=True)
def graphics_port_conflict(facts, dom):
    """Looks at <graphics type='vnc|spice'> with a fixed port, tlsPort or
    websocket (autoport='no') against the other defined domains' fixed ports
    and the host's listening TCP sockets (/proc/net/tcp{,6}, owners by socket
    inode), the domain's own running QEMU excepted.
    Why: a held port fails the start: "internal error: Failed to reserve port
    5905" between two domains, QEMU's "Failed to bind socket: Address already
    in use" against another process, "failed to initialize spice server".
    Fix safety: unsafe: autoport='yes' changes the port clients connect to
    (the operator may pin it on purpose); which domain or process holds the
    port (pid, command line) is in the message."""
    fixed = _fixed_ports(dom.root)
    if not fixed:
        return Pass("no fixed display port")
    name = dom.name or ""
    own_uuid = (dom.root.findtext("uuid") or "").strip()
    clashes = []
    ev = {"ports": [p for _, _, p in fixed], "held": {}}
    others = {}
    try:
        others = facts.devices.display_ports
    except FactUnavailable:
        pass
    sockets = facts.netstate.sockets
    for _, attr, port in fixed:
        doms = [(n, active) for n, active in others.get(port, []) if n != name]
        held = [s for s in sockets if s.proto == "tcp" and s.port == port]
        owners = facts.netstate.owners(s.inode for s in held) if held else {}
        procs = []
        for s in held:
            for o in owners.get(s.inode, []):
                if not _owned_by_domain(o, name) and o not in procs:
                    procs.append(o)
        unknown = [s for s in held if not owners.get(s.inode)]
        mine_running = bool(dom.info is not None and dom.info.active)
        if unknown and mine_running:
            unknown = []  # a running domain holds its own port; owners unknown means not root
        what = [f"domain {n}{' (running)' if a else ''}" for n, a in doms]
        what += [f"{o.name} (pid {o.pid}: {o.command})" for o in procs]
        what += [f"an unknown process ({s.endpoint})" for s in unknown if not doms]
        if what:
            clashes.append(f"{attr} {port} is held by {', '.join(what)}")
            ev["held"][str(port)] = what
    if not clashes:
        return Pass(f"display port(s) {', '.join(str(p) for _, _, p in fixed)} free")
    text = ("Failed to bind socket: Address already in use" if not any("domain " in c for c in clashes)
            else f"internal error: Failed to reserve port {fixed[0][2]}")
    fix = redefine_plan(dom, _use_autoport, auto=Auto.UNSAFE,
                        notes=[f"or choose another fixed port: virsh edit {name or 'NAME'}"])
    return Fail(f"{'; '.join(clashes)}: the start fails (\"{text}\")", ev, plan=fix)


# -- graphics-listen-address-missing ----------------------------------------------------------
def _listen_addresses(facts, dom) -> list[tuple[str, str]]:
    """(address, where it comes from) of each VNC/SPICE graphics."""
    out = []
    for g in dom.root.iterfind("devices/graphics"):
        kind = g.get("type")
        if kind not in ("vnc", "spice"):
            continue
        listens = [l for l in g.iterfind("listen")]
        addr = g.get("listen")
        if addr:
            out.append((addr, f"{kind} listen attribute"))
        for l in listens:
            if l.get("type") == "address" and l.get("address"):
                if l.get("address") != addr:
                    out.append((l.get("address"), f"{kind} <listen type='address'>"))
            elif l.get("type") == "network" and l.get("network"):
                out.append(("network:" + l.get("network"), f"{kind} <listen type='network'>"))
        if not addr and not listens:
            default = facts.conf_value(QEMU_CONF, f"{kind}_listen")
            if default:
                out.append((str(default), f"qemu.conf {kind}_listen"))
    return out


@check("graphics-listen-address-missing", scope="domain", area="graphics", severity="error",
       title="The VNC/SPICE listen addresses are on this host", plans=True)
def graphics_listen_address_missing(facts, dom):
    """Looks at <graphics listen='A'>, <listen type='address' address='A'>,
    <listen type='network' network='N'> and, without any, qemu.conf's
    vnc_listen/spice_listen, against the host's addresses (/proc/net/fib_trie,
    /proc/net/if_inet6; 0.0.0.0, :: and loopback always fine) and, for the
    network form, the network being active.
    Why: QEMU cannot bind an address the host does not have: "Failed to bind
    socket: Cannot assign requested address" (VNC), "failed to initialize
    spice server" (SPICE); typical for XML from another host or after an
    address change.
    Fix safety: manual: the listen address decides who reaches the console;
    127.0.0.1 plus an SSH tunnel, or an address this host has."""
    listens = _listen_addresses(facts, dom)
    if not listens:
        return Pass("no VNC/SPICE listen address")
    bad = []
    for addr, where in listens:
        if addr.startswith("network:"):
            netname = addr.split(":", 1)[1]
            try:
                net = next((n for n in facts.virtnets.networks if n.name == netname), None)
            except FactUnavailable:
                continue
            if net is None or not net.active:
                bad.append(f"{where} names network '{netname}', which is {'not defined' if net is None else 'not active'}")
            continue
        try:
            ip = ipaddress.ip_address(addr.strip("[]"))
        except ValueError:
            continue  # a host name: resolved by QEMU, not judged here
        if not facts.netstate.has_address(ip):
            bad.append(f"{where} {addr} is not an address of this host")
    if not bad:
        return Pass(f"listen address(es) {', '.join(a for a, _ in listens)} present")
    name = dom.name or "NAME"
    return Fail(f"{'; '.join(bad)}: QEMU fails with \"Failed to bind socket: Cannot assign requested address\"",
                {"listens": [a for a, _ in listens]},
                plan=plan("Listen on an address this host has", Auto.MANUAL,
                          RunCommand(["virt-xml", name, "--edit", "--graphics", "listen=127.0.0.1"]), notes=[
                    "then reach it through SSH: ssh -L 5900:127.0.0.1:PORT host",
                    "or set the listen address to one of: " + ", ".join(
                        sorted({str(a.ip) for a in facts.netstate.addresses if not a.ip.is_link_local}))]))


@hookimpl
def virtdoctor_checks():
    return [graphics_port_conflict, graphics_listen_address_missing]

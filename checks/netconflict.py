"""Networks against the host they run on: subnets that clash with the host's
routes or with each other, DNS/DHCP ports held by another server, forwarding
and router-advertisement sysctls, br_netfilter with a FORWARD DROP policy, and
the host links guests plug into (missing bridges, macvtap's host isolation).

Facts: `facts.netstate` (routes, addresses, sockets, sysctls, iptables) and
`facts.virtnets` (libvirt's networks and the guests' NICs, parsed)."""
from __future__ import annotations

import ipaddress

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, RunCommand, Severity, Skip, Warn, WriteFile,
                            check, hookimpl, plan)

DNSMASQ_CONF_DIR = "/var/lib/libvirt/dnsmasq/"
PLAN_DIR = "/var/lib/virtdoctor/networks"


def _uri(facts) -> str:
    try:
        return facts.resolved_uri
    except Exception:
        return "qemu:///system"


def _virsh(facts, *args: str) -> list[str]:
    return ["virsh", "-c", _uri(facts), *args]


# -- network-subnet-conflict ---------------------------------------------------------------
def _clashes(facts, net):
    """(exact, overlaps): route clashes of each <ip> of `net` with routes not
    on its own bridge, and overlaps with other networks' subnets."""
    exact, overlap = [], []
    routes = facts.netstate.routes
    for ipi in net.ips:
        subnet = ipi.network
        for r in routes:
            if r.is_default or r.dest.version != subnet.version or (net.bridge and r.iface == net.bridge):
                continue
            if r.dest == subnet:
                # libvirt's networkCheckRouteCollision: same address and mask -> refuses to start
                exact.append((subnet, f"route {r.dest} on {r.iface}", r.iface))
            elif r.dest.overlaps(subnet):
                overlap.append((subnet, f"route {r.dest} on {r.iface}", r.iface))
        for other in facts.virtnets.networks:
            if other.name == net.name or (net.active and not other.active):
                continue  # a running network is fine until the other one starts: reported on that one
            for oip in other.ips:
                if oip.version == subnet.version and oip.network.overlaps(subnet):
                    # an active one shows up as a route on its bridge already
                    if not (other.active and other.bridge and
                            any(r.iface == other.bridge and r.dest == oip.network for r in routes)):
                        overlap.append((subnet, f"network '{other.name}' ({oip.network})", None))
    return exact, overlap


@check("network-subnet-conflict", scope="host", area="network", severity="error",
       title="libvirt networks' subnets do not clash with the host's routes or each other",
       needs=("libvirt",), plans=True)
def network_subnet_conflict(facts):
    """Looks at every defined network with an <ip> on a bridge libvirt manages
    (isolated, nat, route, open), active or not, against the host's routes
    (/proc/net/route, /proc/net/ipv6_route; default routes and the network's
    own bridge left out) and against the other defined networks.
    Why: a route with the network's exact subnet makes libvirt refuse to start
    it ("internal error: Network is already in use by interface eth0"): the
    nested-host trap (L1's uplink is L0's 192.168.122.0/24), a VPN, Docker or a
    LAN; an overlap with a different prefix starts but breaks traffic.
    Fix safety: unsafe (guests get new addresses): moves the network to a free
    private /24 chosen from the routing table (XML, DHCP range and hosts),
    redefining and restarting it; offered only when no running guest uses it."""
    results = []
    nets = [n for n in facts.virtnets.networks if n.managed_bridge and n.ips]
    if not nets:
        return Pass("no libvirt network with an address of its own")
    taken = [r.dest for r in facts.netstate.routes if not r.is_default]
    taken += [ip.network for n in facts.virtnets.networks for ip in n.ips]
    for net in nets:
        exact, overlap = _clashes(facts, net)
        if not exact and not overlap:
            continue
        ev = {"network": net.name, "active": net.active, "subnets": [str(i.network) for i in net.ips],
              "exact": [w for _, w, _ in exact], "overlaps": [w for _, w, _ in overlap]}
        if exact:
            subnet, what, iface = exact[0]
            msg = (f"network '{net.name}' ({subnet}) clashes with {what}"
                   + ("" if net.active else f": starting it fails with \"internal error: Network is already in use "
                                            f"by interface {iface}\""))
        else:
            subnet, what, _ = overlap[0]
            msg = f"network '{net.name}' ({subnet}) overlaps {what}: traffic to that range goes astray"
        more = [w for _, w, _ in (exact + overlap)[1:]]
        if more:
            msg += f" (also: {', '.join(more)})"
        severity = Severity.ERROR if (exact and not net.active) else Severity.WARNING
        results.append(Fail(msg, ev, severity=severity, key=net.name,
                            plan=_move_plan(facts, net, subnet, taken)))
    return results or Pass(f"network subnets clash with no route or network: {', '.join(n.name for n in nets)}")


def _move_plan(facts, net, subnet, taken):
    manual = plan(f"Move network '{net.name}' off {subnet}", Auto.MANUAL,
                  notes=[f"virsh net-edit {net.name}: change <ip address> and the <dhcp> range to a free "
                         f"private subnet, then virsh net-destroy {net.name}; virsh net-start {net.name}",
                         "or remove the conflicting route (VPN, Docker network, second uplink)"])
    if subnet.version != 4:
        return manual
    running = [g.name for g in facts.virtnets.users(net) if g.active]
    if running:
        return plan(manual.summary, Auto.MANUAL,  # plans are frozen: a new one with the note first
                    notes=[f"not moved automatically: running guest(s) {', '.join(running)} use it", *manual.notes])
    from_ = subnet
    target = _free(taken, from_.prefixlen)
    if target is None:
        return manual
    try:
        new_xml = facts.virtnets.renumbered_xml(net.name, from_, target)
        old_xml = facts.virtnets.xml(net.name)
    except FactUnavailable:
        return manual
    path = f"{PLAN_DIR}/{net.name}.xml"
    old_path = f"{PLAN_DIR}/{net.name}.before.xml"
    actions = [WriteFile(old_path, old_xml + "\n", 0o600), WriteFile(path, new_xml + "\n", 0o600)]
    if net.active:
        actions.append(RunCommand(_virsh(facts, "net-destroy", net.name), undo=_virsh(facts, "net-start", net.name)))
    actions.append(RunCommand(_virsh(facts, "net-define", path), undo=_virsh(facts, "net-define", old_path)))
    actions.append(RunCommand(_virsh(facts, "net-start", net.name), undo=_virsh(facts, "net-destroy", net.name)))
    return plan(f"Move network '{net.name}' from {from_} to {target} (free in the routing table)", Auto.UNSAFE,
                *actions, notes=[f"guests on '{net.name}' get addresses in {target} at their next DHCP lease",
                                 "stopped guests with static addresses in the old range need them changed"])


def _free(taken, prefixlen):
    """The first private subnet of `prefixlen` (192.168.100-254.0/24, then
    10.100-109.x) overlapping none of `taken`."""
    blocks = [ipaddress.IPv4Network(f"192.168.{i}.0/24") for i in range(100, 255)]
    blocks += [ipaddress.IPv4Network(f"10.{i}.{j}.0/24") for i in range(100, 110) for j in range(0, 256, 16)]
    for c in blocks:
        n = c if prefixlen == 24 else (c.supernet(new_prefix=prefixlen) if prefixlen < 24
                                       else next(c.subnets(new_prefix=prefixlen)))
        if not any(t.version == 4 and n.overlaps(t) for t in taken):
            return n
    return None


# -- dnsmasq-port-conflict ---------------------------------------------------------------------
def _libvirt_dnsmasq(owner) -> bool:
    return owner.name == "dnsmasq" and any(a.startswith("--conf-file=" + DNSMASQ_CONF_DIR) for a in owner.cmdline)


@check("dnsmasq-port-conflict", scope="host", area="network", severity="error",
       title="No other DNS/DHCP server holds the ports libvirt's dnsmasq needs", needs=("libvirt",), plans=True)
def dnsmasq_port_conflict(facts):
    """Looks at the inactive networks whose dnsmasq serves DNS or DHCP, and at
    the host's sockets (/proc/net/{tcp,udp}{,6}, owners by socket inode in
    /proc/PID/fd): port 53 on the wildcard address or on the network's address,
    and for DHCP 0.0.0.0:67/udp, held by anything but a libvirt dnsmasq.
    127.0.0.53 (systemd-resolved) does not conflict.
    Why: the network then fails to start: "internal error: Child process
    (VIR_BRIDGE_NAME=virbr0 /usr/sbin/dnsmasq --conf-file=...) unexpected exit
    status 2: dnsmasq: failed to create listening socket for 192.168.122.1:
    Address already in use".
    Fix safety: manual (another daemon's configuration): names the process (pid,
    command line) and Debian's advice (interface=lo plus bind-interfaces)."""
    nets = [n for n in facts.virtnets.networks if n.managed_bridge and (n.dns or n.dhcp) and n.ips]
    waiting = [n for n in nets if not n.active]
    if not waiting:
        return Pass("every network served by dnsmasq is running" if nets else "no network served by dnsmasq")
    results = []
    for net in waiting:
        v4 = [i.ip for i in net.ips if i.version == 4]
        bad = []
        for s in facts.netstate.sockets:
            if s.port == 53 and net.dns and (s.wildcard or s.ip in [i.ip for i in net.ips]):
                bad.append(s)
            elif s.port == 67 and s.proto == "udp" and net.dhcp and v4 and s.wildcard and s.ip.version == 4:
                bad.append(s)
        owners = facts.netstate.owners(s.inode for s in bad)
        held = []
        for s in bad:
            procs = owners.get(s.inode, [])
            if procs and all(_libvirt_dnsmasq(o) for o in procs):
                # libvirt's dnsmasqs share the DHCP port; one on this network's address
                # means two networks on one subnet: network-subnet-conflict's case
                continue
            held.append((s, procs))
        if not held:
            continue
        desc = []
        for s, procs in held:
            who = ", ".join(f"{o.name} (pid {o.pid}: {o.command})" for o in procs) or "an unknown process"
            desc.append(f"{s.endpoint} held by {who}")
        first = held[0][0]
        text = ("failed to bind DHCP server socket: Address already in use" if first.port == 67 else
                f"failed to create listening socket for {v4[0] if v4 else net.ips[0].ip}: Address already in use")
        pids = sorted({o.pid for _, procs in held for o in procs})
        notes = [f"{d}" for d in desc]
        acts = []
        if any(o.name == "dnsmasq" for _, procs in held for o in procs):
            # Debian's README.Debian ("The default NAT network"): the system dnsmasq stays on lo
            acts.append(RunCommand(["sh", "-c", "printf 'interface=lo\\nbind-interfaces\\n' > "
                                                "/etc/dnsmasq.d/00_libvirtd.conf"]))
            notes.append("then restart the system dnsmasq (it reads /etc/dnsmasq.d)")
        else:
            notes.append("reconfigure that server to listen only on its own addresses (not 0.0.0.0 or "
                         f"{v4[0] if v4 else net.ips[0].ip}), or stop it")
        acts.append(RunCommand(_virsh(facts, "net-start", net.name)))
        results.append(Fail(f"network '{net.name}' cannot start its dnsmasq: {'; '.join(desc)} "
                            f"(\"dnsmasq: {text}\")",
                            {"network": net.name, "sockets": [s.endpoint for s, _ in held], "pids": pids},
                            key=net.name,
                            plan=plan(f"Free {', '.join(sorted({s.endpoint for s, _ in held}))} for network "
                                      f"'{net.name}' (held by pid {', '.join(map(str, pids)) or 'unknown'})",
                                      Auto.MANUAL, *acts, notes=notes)))
    return results or Pass(f"ports 53/67 free for network(s) {', '.join(n.name for n in waiting)}")


# -- ip-forward-disabled -------------------------------------------------------------------------
@check("ip-forward-disabled", scope="host", area="network", severity="error",
       title="IP forwarding is on for NAT and routed networks", needs=("libvirt",), plans=True)
def ip_forward_disabled(facts):
    """Looks at the active networks with <forward mode='nat|route|open'>
    against /proc/sys/net/ipv4/ip_forward (and net.ipv6.conf.all.forwarding for
    networks with an IPv6 address), and at /etc/sysctl.conf, /etc/sysctl.d,
    /run/sysctl.d and /usr/lib/sysctl.d lines setting them to 0.
    Why: libvirt turns forwarding on when such a network starts; switched off
    later (a `sysctl --system` reload, a hardening profile) the guests reach
    the host but not the outside world, without any error. A sysctl file with
    0 switches it off again at the next reload.
    Fix safety: safe: `sysctl -w net.ipv4.ip_forward=1` restores what libvirt
    set itself; the sysctl file is left to the operator (manual note)."""
    forwarding = [n for n in facts.virtnets.networks if n.active and n.forwards]
    if not forwarding:
        return Pass("no active NAT, routed or open network")
    wants = [("net.ipv4.ip_forward", [n.name for n in forwarding if any(i.version == 4 for i in n.ips) or not n.ips])]
    v6 = [n.name for n in forwarding if any(i.version == 6 for i in n.ips)]
    if v6:
        wants.append(("net.ipv6.conf.all.forwarding", v6))
    off, actions, notes, ev = [], [], [], {}
    for key, names in wants:
        if not names:
            continue
        value = facts.netstate.sysctl(key)
        persisted = [s for s in facts.netstate.sysctl_settings(key)]
        last = persisted[-1] if persisted else None
        ev[key] = {"value": value, "networks": names,
                   "files": [f"{s.file}:{s.line}: {s.key} = {s.value}" for s in persisted]}
        if value is None:
            continue
        if value == "0":
            off.append(f"{key} is 0 while network(s) {', '.join(names)} forward: guests cannot reach beyond the host")
            actions.append(RunCommand(["sysctl", "-w", f"{key}=1"], undo=["sysctl", "-w", f"{key}=0"]))
        if last is not None and last.value == "0":
            notes.append(f"{last.file} line {last.line} sets {key} = 0: the next `sysctl --system` turns forwarding "
                         f"off again; change it to 1 or remove it")
            if value != "0":
                off.append(f"{last.file}:{last.line} sets {key} = 0 (now {value}): the next sysctl reload cuts "
                           f"network(s) {', '.join(names)} off")
    if not off:
        return Pass("IP forwarding is on for " + ", ".join(n.name for n in forwarding), ev)
    if actions:
        return Fail("; ".join(off), ev, plan=plan("Turn IP forwarding back on", Auto.SAFE, *actions, notes=notes))
    return Warn("; ".join(off), ev, plan=plan("Keep IP forwarding on across sysctl reloads", Auto.MANUAL, notes=notes))


# -- bridge-netfilter-forward-drop -----------------------------------------------------------------
def _host_bridge_users(facts) -> dict[str, list[str]]:
    managed = {n.bridge for n in facts.virtnets.networks if n.managed_bridge and n.bridge}
    via_net = {n.name: n.bridge for n in facts.virtnets.networks if n.forward == "bridge" and n.bridge}
    users: dict[str, list[str]] = {}
    for g in facts.virtnets.guests:
        for nic in g.nics:
            br = nic.bridge if nic.type == "bridge" else via_net.get(nic.network) if nic.type == "network" else None
            if br and br not in managed and g.name not in users.setdefault(br, []):
                users[br].append(g.name)
    return users


@check("bridge-netfilter-forward-drop", scope="host", area="network", severity="error",
       title="Bridged guest traffic is not dropped by br_netfilter and a FORWARD DROP policy",
       needs=("libvirt",), plans=True)
def bridge_netfilter_forward_drop(facts):
    """Looks at guests on host bridges (<interface type='bridge'> or a
    forward mode='bridge' network, not libvirt's own bridges), the sysctl
    net.bridge.bridge-nf-call-iptables (1 when br_netfilter is loaded) and the
    filter table's FORWARD policy and rules (`iptables -S`).
    Why: with br_netfilter, frames crossing a bridge traverse iptables FORWARD;
    a DROP policy (Docker sets it) silently cuts bridged guests off. libvirt's
    NAT networks carry their own ACCEPT rules; host bridges do not.
    Fix safety: manual (firewall policy): the exact ACCEPT rule per bridge (in
    DOCKER-USER when Docker's chain exists), or bridge-nf-call-iptables=0."""
    users = _host_bridge_users(facts)
    if not users:
        return Pass("no guest on a host bridge")
    if not facts.netstate.br_netfilter:
        return Pass("br_netfilter does not send bridged frames through iptables "
                    "(net.bridge.bridge-nf-call-iptables is not 1)", {"bridges": users})
    policy = facts.netstate.forward_policy
    if policy == "ACCEPT":
        return Pass("FORWARD policy is ACCEPT", {"bridges": users, "policy": policy})
    rules = facts.netstate.forward_rules
    docker = any(r.startswith("-A DOCKER-USER") for r in rules) or any(r == "-N DOCKER-USER" for r in rules)
    uncovered = []
    for br in users:
        covered = any(("-j ACCEPT" in r) and (f"-i {br} " in r + " " or "--physdev-is-bridged" in r)
                      for r in rules if r.startswith(("-A FORWARD", "-A DOCKER-USER")))
        if not covered:
            uncovered.append(br)
    ev = {"bridges": users, "policy": policy, "docker_user_chain": docker}
    if not uncovered:
        return Pass(f"FORWARD policy {policy}, but ACCEPT rules cover {', '.join(users)}", ev)
    chain = "DOCKER-USER" if docker else "FORWARD"
    acts = [RunCommand(["iptables", "-I", chain, "-i", br, "-o", br, "-j", "ACCEPT"]) for br in uncovered]
    notes = []
    notes.append("or, if nothing on this host filters bridged traffic on purpose: "
                 "sysctl -w net.bridge.bridge-nf-call-iptables=0 (and persist it in /etc/sysctl.d)")
    who = "; ".join(f"{br}: {', '.join(users[br])}" for br in uncovered)
    return Fail(f"br_netfilter sends bridged frames through iptables and the FORWARD policy is {policy}: "
                f"guests on host bridge(s) lose their traffic ({who})", ev,
                plan=plan(f"Accept bridged traffic on {', '.join(uncovered)}", Auto.MANUAL, *acts, notes=notes))


# -- ipv6-accept-ra-conflict ----------------------------------------------------------------------
@check("ipv6-accept-ra-conflict", scope="host", area="network", severity="error",
       title="Uplinks with RA-learned IPv6 routes accept RAs with forwarding on (accept_ra=2)",
       needs=("libvirt",), plans=True)
def ipv6_accept_ra_conflict(facts):
    """Looks at networks with an IPv6 <ip> and a forward mode, the links with
    routes learned from router advertisements (`ip -6 route show proto ra`,
    what libvirt's netlink check reads) and their
    /proc/sys/net/ipv6/conf/LINK/accept_ra.
    Why: starting such a network turns IPv6 forwarding on, which makes the
    kernel flush RA routes on links with accept_ra=1; libvirt refuses: "Check
    the host setup: interface eth0 has kernel autoconfigured IPv6 routes and
    enabling forwarding without accept_ra set to 2 will cause the kernel to
    flush them, breaking networking."
    Fix safety: safe (host-only, keeps RAs working): sysctl -w
    net.ipv6.conf.LINK.accept_ra=2; persisting it is a manual note."""
    nets = [n for n in facts.virtnets.networks if n.forward in ("nat", "route", "open") and
            any(i.version == 6 for i in n.ips)]
    if not nets:
        return Pass("no network forwards IPv6")
    links = facts.netstate.ra_route_links
    bad = [l for l in links if facts.netstate.sysctl(f"net/ipv6/conf/{l}/accept_ra") not in ("2", None)]
    ev = {"networks": [n.name for n in nets], "ra_links": links, "bad": bad}
    if not bad:
        return Pass("no link with RA-learned routes refuses RAs under forwarding", ev)
    msg = (f"interface {bad[0]} has kernel autoconfigured IPv6 routes and accept_ra is not 2: starting "
           f"{', '.join(n.name for n in nets)} fails (\"Check the host setup: interface {bad[0]} has kernel "
           f"autoconfigured IPv6 routes ...\")")
    return Fail(msg, ev, plan=plan(f"Set accept_ra=2 on {', '.join(bad)}", Auto.SAFE,
                                   *[RunCommand(["sysctl", "-w", f"net.ipv6.conf.{l}.accept_ra=2"]) for l in bad],
                                   notes=[f"persist: echo 'net.ipv6.conf.{l}.accept_ra = 2' >> "
                                          f"/etc/sysctl.d/90-libvirt-accept-ra.conf" for l in bad]))


# -- bridge-missing (domain) --------------------------------------------------------------------------
def _configured(facts, name: str) -> str | None:
    """The ifupdown file that declares `iface NAME`, if any."""
    files = ["/etc/network/interfaces", *facts.glob("/etc/network/interfaces.d/*")]
    for path in files:
        try:
            text = facts.read_text(path) or ""
        except FactUnavailable:
            continue
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("iface", "auto", "allow-hotplug") and name in words[1:]:
                return path
    return None


@check("bridge-missing", scope="domain", area="network", severity="error",
       title="The bridges the domain's NICs name exist", plans=True)
def bridge_missing(facts, dom):
    """Looks at each <interface type='bridge'><source bridge='X'> (and
    networks with forward mode='bridge' a NIC names): X exists in
    /sys/class/net. A link that exists but is not a bridge is
    bridge-source-not-bridge's; here only absent ones, told apart by whether
    /etc/network/interfaces(.d) declares it (configured but down) or not (typo).
    Why: the start fails with "Cannot get interface MTU on 'br0': No such
    device" (session: "failed to get mtu of bridge `br0': No such device").
    Fix safety: manual: `ifup br0` when it is configured; otherwise create it
    or correct the name (a different network for the guest)."""
    wanted = []
    via_net = {}
    try:
        via_net = {n.name: n.bridge for n in facts.virtnets.networks if n.forward == "bridge" and n.bridge}
    except FactUnavailable:
        pass
    for iface in dom.root.iterfind("devices/interface"):
        src = iface.find("source")
        if src is None:
            continue
        if iface.get("type") == "bridge" and src.get("bridge"):
            wanted.append((src.get("bridge"), "<source bridge>"))
        elif iface.get("type") == "network" and src.get("network") in via_net:
            wanted.append((via_net[src.get("network")], f"network '{src.get('network')}'"))
    if not wanted:
        return Pass("no NIC on a host bridge")
    links = facts.links
    missing = [(b, how) for b, how in wanted if b not in links]
    if not missing:
        return Pass(f"bridge(s) {', '.join(sorted({b for b, _ in wanted}))} exist")
    notes, bad, acts = [], [], []
    for br, how in missing:
        conf = _configured(facts, br)
        if conf:
            bad.append(f"bridge {br} ({how}) is configured in {conf} but not up")
            acts.append(RunCommand(["ifup", br]))
        else:
            bad.append(f"bridge {br} ({how}) does not exist and no ifupdown file declares it")
            notes.append(f"a typo? existing bridges: {', '.join(sorted(n for n, l in links.items() if l.is_bridge)) or 'none'}; "
                         "or create it (persist it in /etc/network/interfaces with bridge_ports; needs bridge-utils)")
            acts += [RunCommand(["ip", "link", "add", br, "type", "bridge"]), RunCommand(["ip", "link", "set", br, "up"])]
    br0 = missing[0][0]
    return Fail(f"{'; '.join(bad)}: the start fails with \"Cannot get interface MTU on '{br0}': No such device\"",
                {"missing": [b for b, _ in missing]},
                plan=plan(f"Bring up or create bridge(s) {', '.join(b for b, _ in missing)}", Auto.MANUAL, *acts,
                          notes=notes))


# -- macvtap-host-isolation (domain) ------------------------------------------------------------------
@check("macvtap-host-isolation", scope="domain", area="network", severity="info",
       title="macvtap guests cannot talk to the host over their lower device", plans=True)
def macvtap_host_isolation(facts, dom):
    """Looks at <interface type='direct'><source dev='X' mode='bridge|vepa|private'>
    while the host has an address on X (from /proc/net/fib_trie, if_inet6).
    Why: macvtap does not loop frames between the host's own stack and its
    endpoints on the same lower device: the guest reaches the LAN but not the
    host, and the host cannot reach the guest. Not an error, a property.
    Fix safety: manual: a second NIC on a libvirt network (or a Linux bridge
    instead of macvtap) for host<->guest traffic."""
    lowers = []
    for iface in dom.root.iterfind("devices/interface"):
        src = iface.find("source")
        if iface.get("type") == "direct" and src is not None and src.get("dev"):
            mode = src.get("mode") or "vepa"
            if mode != "passthrough":
                lowers.append((src.get("dev"), mode))
    if not lowers:
        return Pass("no macvtap (type='direct') NIC")
    addrs = facts.netstate.addresses
    isolated = []
    for dev, mode in lowers:
        mine = [str(a.ip) for a in addrs if a.iface == dev and not a.ip.is_link_local]
        if mine:
            isolated.append((dev, mode, mine))
    if not isolated:
        return Pass(f"the host has no address on macvtap lower device(s) {', '.join(d for d, _ in lowers)}")
    dev, mode, ips = isolated[0]
    name = dom.name or "DOMAIN"
    return Fail(f"macvtap on {dev} (mode {mode}): the guest cannot reach the host at {', '.join(ips)} and the host "
                f"cannot reach the guest over {dev}", {"lower": dev, "mode": mode, "host_addresses": ips},
                plan=plan("Give the guest a second NIC for host<->guest traffic", Auto.MANUAL,
                          RunCommand(["virsh", "-c", _uri(facts), "attach-interface", name, "network", "default",
                                      "--model", "virtio", "--config"]),
                          notes=[f"or replace macvtap by a Linux bridge over {dev} (<interface type='bridge'>)"]))


@hookimpl
def virtdoctor_checks():
    return [network_subnet_conflict, dnsmasq_port_conflict, ip_forward_disabled, bridge_netfilter_forward_drop,
            ipv6_accept_ra_conflict, bridge_missing, macvtap_host_isolation]

"""Guest NICs: MAC addresses."""
from __future__ import annotations

import hashlib

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, Severity, Skip, Warn, check, hookimpl, planner,
                            redefine_plan)

QEMU_OUI = "52:54:00"


def norm_mac(text: str | None) -> str | None:
    """Lower-case colon form, None when it is not a MAC.

    >>> norm_mac("52-54-00-AB-cd-01"), norm_mac("nonsense")
    ('52:54:00:ab:cd:01', None)
    """
    if not text:
        return None
    parts = text.strip().replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and all(c in "0123456789abcdef" for c in p) for p in parts):
        return None
    return ":".join(p.zfill(2) for p in parts)


def interface_macs(root, *, teaming: bool = True) -> list[tuple[int, str, str]]:
    """(index among <interface>s, MAC, label) of every interface with a MAC.
    teaming=False leaves out the transient half of a virtio failover pair,
    which must carry its persistent partner's MAC."""
    out = []
    for i, iface in enumerate(root.iterfind("devices/interface")):
        mac_el = iface.find("mac")
        mac = norm_mac(mac_el.get("address")) if mac_el is not None else None
        team = iface.find("teaming")
        if not teaming and team is not None and team.get("type") == "transient":
            continue
        if mac:
            target = iface.find("target")
            src = iface.find("source")
            where = (src.get("network") or src.get("bridge") or src.get("dev")) if src is not None else None
            label = f"interface {i + 1} ({iface.get('type')}{' ' + where if where else ''}"
            label += f", {target.get('dev')})" if target is not None and target.get("dev") else ")"
            out.append((i, mac, label))
    return out


def _owners(facts) -> dict[str, list[tuple[str, str, bool, str]]]:
    """MAC -> [(domain name, uuid, active, interface label)] over every domain
    defined on the connection (facts.domains: parsed once), built once per run
    (facts.memo); failover pairs count once. Raises FactUnavailable without libvirt."""
    return facts.memo("nics-mac-owners", lambda: _mac_owners(facts.domains))


def _mac_owners(domains) -> dict[str, list[tuple[str, str, bool, str]]]:
    owners: dict[str, list[tuple[str, str, bool, str]]] = {}
    for d in domains:
        for _, mac, label in interface_macs(d.root, teaming=False):
            owners.setdefault(mac, []).append((d.name, d.info.uuid.lower(), d.info.active, label))
    return owners


def _other_owners(facts, dom, mac: str) -> list[tuple[str, bool, str]]:
    """(name, active, interface label) of other defined domains using `mac`
    (not the domain itself, nor the one a preflight XML redefines: same name or uuid)."""
    own_uuid = (dom.root.findtext("uuid") or "").strip().lower()
    return [(name, active, label) for name, uuid, active, label in _owners(facts).get(mac, [])
            if name != dom.name and not (own_uuid and uuid == own_uuid)]


def used_macs(facts, dom) -> set[str]:
    used = {m for _, m, _ in interface_macs(dom.root)}
    try:
        used.update(_owners(facts))
    except FactUnavailable:
        pass
    return used


def new_mac(seed: str, used: set[str]) -> str:
    """A 52:54:00 MAC derived from `seed`, not in `used` (deterministic, so a
    plan shows the MAC it will write)."""
    n = 0
    while True:
        digest = hashlib.sha256(f"{seed}|{n}".encode()).digest()
        mac = f"{QEMU_OUI}:{digest[0]:02x}:{digest[1]:02x}:{digest[2]:02x}"
        if mac not in used:
            return mac
        n += 1


def _replace_macs(changes: dict[tuple[int, str], str]):
    """Edit: interface number i whose MAC is still `old` gets `new`."""
    def edit(root):
        for i, iface in enumerate(root.iterfind("devices/interface")):
            mac_el = iface.find("mac")
            if mac_el is None:
                continue
            key = (i, norm_mac(mac_el.get("address")))
            if key in changes:
                mac_el.set("address", changes[key])
    return edit


def _is_qemu(dom) -> bool:
    return dom.virt_type in ("kvm", "qemu", "kqemu", "")


# -- mac-prefix ------------------------------------------------------------------------
@check("mac-prefix", scope="domain", area="nics", severity="warning",
       title="Interface MACs use QEMU's 52:54:00 prefix", plans=True)
def mac_prefix(facts, dom):
    """Looks at each <interface><mac address> of a QEMU/KVM domain.
    Why: libvirt and virt-install generate 52:54:00:xx:xx:xx for QEMU/KVM;
    hand-made MACs outside it collide with real vendors' hardware on the LAN or
    are multicast (refused: "expected unicast mac address, found multicast").
    Fix safety: unsafe: the guest sees a new NIC (udev names, DHCP leases and
    licences keyed on the MAC change); the new MAC is unique on the connection."""
    if not _is_qemu(dom):
        return Pass(f"not a QEMU/KVM domain ({dom.virt_type})")
    macs = interface_macs(dom.root)
    bad = [(i, m, label) for i, m, label in macs if not m.startswith(QEMU_OUI + ":")]
    evidence = {"macs": [m for _, m, _ in macs], "outside_prefix": [m for _, m, _ in bad]}
    if not bad:
        return Pass(f"{len(macs)} interface MAC(s) in {QEMU_OUI}" if macs else "no fixed MACs", evidence)
    multicast = [m for _, m, _ in bad if int(m[:2], 16) & 1]
    text = ", ".join(f"{label} {m}" for _, m, label in bad)
    if multicast:
        return Fail(f"{text}: {', '.join(multicast)} is multicast; libvirt refuses it (\"XML error: expected unicast "
                    f"mac address, found multicast '{multicast[0]}'\")", evidence, severity=Severity.ERROR, plan=regenerate_prefix(facts, dom))
    return Warn(f"{text}: outside QEMU/KVM's {QEMU_OUI} prefix", evidence, plan=regenerate_prefix(facts, dom))


def _regenerate_plan(facts, dom, nics, notes=()):
    """A plan giving each (index, mac) of `nics` a new unique 52:54:00 MAC."""
    used = used_macs(facts, dom)
    changes = {}
    for i, m in nics:
        mac = new_mac(f"{dom.name}|{i}|{m}", used)
        used.add(mac)
        changes[(i, m)] = mac
    if not changes:
        return None
    edit = _replace_macs(changes)
    return redefine_plan(dom, lambda d: edit(d.root), auto=Auto.UNSAFE, notes=notes,
                         summary="Regenerate " + ", ".join(f"{o} -> {n}" for (_, o), n in changes.items()))


@planner
def regenerate_prefix(facts, dom):
    return _regenerate_plan(facts, dom, [(i, m) for i, m, _ in interface_macs(dom.root)
                                         if not m.startswith(QEMU_OUI + ":")])


# -- mac-duplicate ------------------------------------------------------------------------
def _duplicates(facts, dom):
    """(own duplicates [(i, mac, label, clash)], other-domain reason or None)."""
    macs = interface_macs(dom.root, teaming=False)
    dups = []
    seen: dict[str, tuple[int, str]] = {}
    for i, m, label in macs:
        if m in seen:
            dups.append((i, m, label, f"{seen[m][1]} of this domain", seen[m][0]))
        else:
            seen[m] = (i, label)
    unavailable = None
    try:
        _owners(facts)
    except FactUnavailable as exc:
        unavailable = str(exc)
    for i, m, label in macs:
        others = [] if unavailable else _other_owners(facts, dom, m)
        if others and not any(d[0] == i for d in dups):
            dups.append((i, m, label, ", ".join(f"{lab} of domain {name}" for name, _, lab in others), None))
    return dups, unavailable, None


@check("mac-duplicate", scope="domain", area="nics", severity="error",
       title="No MAC address is used twice on the connection", plans=True)
def mac_duplicate(facts, dom):
    """Looks at the MACs of this domain's interfaces against each other and
    against every other domain defined on the connection (a preflight XML is
    compared with the defined domains too, except the one it redefines).
    Why: two NICs with one MAC on a segment break each other's traffic (ARP
    flaps, DHCP hands both the same lease); randomly chosen MACs collide more
    often than expected (the seed).
    Fix safety: unsafe (the guest sees a new NIC); one side gets a new unique
    52:54:00 MAC: the stopped one, else the later name."""
    dups, unavailable, _ = _duplicates(facts, dom)
    evidence = {"macs": [m for _, m, _ in interface_macs(dom.root)],
                "duplicates": [{"mac": m, "interface": label, "also": clash} for _, m, label, clash, _ in dups]}
    if unavailable:
        evidence["other_domains"] = f"not compared: {unavailable}"
    if dups:
        text = "; ".join(f"{label} has {m}, as has {clash}" for _, m, label, clash, _ in dups)
        types = [i.get("type") for i in dom.root.iterfind("devices/interface")]
        if all(first is not None and types[i] == types[first] == "user" for i, _, _, _, first in dups):
            # each user-mode NIC has its own private slirp network: nothing collides on a wire,
            # but the guest sees NICs it cannot tell apart by MAC (udev names, NetworkManager)
            return Warn(text + " (user-mode NICs: no shared segment, but the guest cannot tell them apart)",
                        evidence, plan=regenerate_duplicate(facts, dom))
        return Fail(text, evidence, plan=regenerate_duplicate(facts, dom))
    if unavailable:
        if any(True for _ in interface_macs(dom.root)):
            return Skip(f"no duplicate inside the domain; other domains not compared: {unavailable}", evidence)
    return Pass("every MAC is unique", evidence)


def _loser(facts, dom, mac: str) -> str:
    """Which domain should give up `mac`: a stopped one before a running one,
    then the later name."""
    cands = [(dom.info.active if dom.info else False, dom.name or "")]
    cands += [(active, name) for name, active, _ in _other_owners(facts, dom, mac)]
    return sorted(cands, key=lambda c: (not c[0], c[1]))[-1][1]


@planner
def regenerate_duplicate(facts, dom):
    dups, _, _ = _duplicates(facts, dom)
    nics = []
    notes = []
    for i, m, label, clash, first in dups:
        if first is None:
            try:
                loser = _loser(facts, dom, m)
            except FactUnavailable:
                loser = dom.name
            if loser != dom.name:
                notes.append(f"{m} stays on this domain; the fix of domain {loser} changes its copy")
                continue
        nics.append((i, m))
    return _regenerate_plan(facts, dom, nics, notes)


@hookimpl
def virtdoctor_checks():
    return [mac_prefix, mac_duplicate]

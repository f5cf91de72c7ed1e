"""Network links from sysfs (/sys/class/net): bridges, their ports, bonds and
their mode, and which master a link is enslaved to."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    name: str
    is_bridge: bool
    is_bond: bool
    master: str | None  # the bridge or bond this link is enslaved to
    ports: tuple[str, ...]  # bridge ports (brif) or bond slaves
    bond_mode: str | None  # e.g. "balance-alb 6"
    operstate: str
    kind: str  # "bridge", "bond", "tun", "veth", "physical", "virtual"

    @property
    def bond_mode_name(self) -> str | None:
        return self.bond_mode.split()[0] if self.bond_mode else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def read_links(netdir: str) -> dict[str, Link]:
    links: dict[str, Link] = {}
    try:
        names = sorted(os.listdir(netdir))
    except OSError:
        return links
    for name in names:
        base = os.path.join(netdir, name)
        if not os.path.isdir(base):
            continue
        is_bridge = os.path.isdir(os.path.join(base, "bridge"))
        is_bond = os.path.isdir(os.path.join(base, "bonding"))
        master = None
        master_link = os.path.join(base, "master")
        if os.path.islink(master_link):
            master = os.path.basename(os.readlink(master_link))
        ports: tuple[str, ...] = ()
        if is_bridge:
            try:
                ports = tuple(sorted(os.listdir(os.path.join(base, "brif"))))
            except OSError:
                ports = ()
        elif is_bond:
            ports = tuple((_read(os.path.join(base, "bonding", "slaves")) or "").split())
        bond_mode = _read(os.path.join(base, "bonding", "mode")) if is_bond else None
        uevent = _read(os.path.join(base, "uevent")) or ""
        devtype = next((l.split("=", 1)[1] for l in uevent.splitlines() if l.startswith("DEVTYPE=")), "")
        if is_bridge:
            kind = "bridge"
        elif is_bond:
            kind = "bond"
        elif devtype:
            kind = devtype
        elif os.path.exists(os.path.join(base, "device")):
            kind = "physical"
        else:
            kind = "virtual"
        links[name] = Link(name, is_bridge, is_bond, master, ports, bond_mode,
                           _read(os.path.join(base, "operstate")) or "unknown", kind)
    return links

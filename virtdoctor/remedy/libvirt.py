"""Executors of the libvirt actions: redefine a domain (its inactive XML with
secrets kept in the backup), start a network, define a network. Each records
in the manifest what it changed, so a rollback or `fix --undo` restores it."""
from __future__ import annotations

import hashlib
import os

from virtdoctor.remedy.plan import ActionError, DefineDomain, DefineNetwork, EditDomain, StartNetwork


def _lv():
    import libvirt

    return libvirt


def _secure_xml(env, name: str) -> str:
    lv = _lv()
    try:
        dom = env.conn().lookupByName(name)
        return dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
    except lv.libvirtError as exc:
        raise ActionError(f"cannot read domain {name}: {exc.get_error_message()}") from exc


def rebuild(a: DefineDomain, current_xml: str) -> str:
    """The XML to define given the domain's current inactive XML with secrets:
    EditDomain re-applies its operations to it, DefineDomain defines new_xml."""
    if isinstance(a, EditDomain) and a.ops:
        from virtdoctor.remedy.edits import EditConflict, apply_ops

        try:
            return apply_ops(current_xml, a.ops)
        except EditConflict as exc:
            raise ActionError(f"domain {a.name} changed since the plan was made: {exc}") from exc
    return a.new_xml


def _define(a: DefineDomain, env) -> None:
    lv = _lv()
    current = _secure_xml(env, a.name)
    new_xml = rebuild(a, current)
    rel = os.path.join("domains", f"{a.name}.xml")
    path = os.path.join(env.backup_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(current)
    os.chmod(path, 0o600)  # it holds the domain's secrets
    try:
        env.conn().defineXMLFlags(new_xml, lv.VIR_DOMAIN_DEFINE_VALIDATE)
    except lv.libvirtError as exc:
        raise ActionError(f"libvirt refused the new XML: {exc.get_error_message()}") from exc
    env.record({"kind": "domain", "name": a.name, "before": rel})




def _net_state(env, name: str) -> dict:
    lv = _lv()
    try:
        net = env.conn().networkLookupByName(name)
    except lv.libvirtError:
        return {"defined": False}
    return {"defined": True, "active": bool(net.isActive()), "autostart": bool(net.autostart()),
            "persistent": bool(net.isPersistent())}


def _start_network(a: StartNetwork, env) -> None:
    lv = _lv()
    before = _net_state(env, a.name)
    try:
        net = env.conn().networkLookupByName(a.name)
        if not net.isActive():
            net.create()
        if a.autostart and net.isPersistent():
            net.setAutostart(1)
    except lv.libvirtError as exc:
        raise ActionError(exc.get_error_message()) from exc
    finally:
        env.record({"kind": "network", "name": a.name, "before": before})


def _define_network(a: DefineNetwork, env) -> None:
    lv = _lv()
    before = _net_state(env, a.name)
    if before["defined"]:
        return  # defined meanwhile: nothing to do
    try:
        env.conn().networkDefineXML(a.xml)
    except lv.libvirtError as exc:
        raise ActionError(f"libvirt refused {a.source}: {exc.get_error_message()}") from exc
    env.record({"kind": "network", "name": a.name, "before": before})


# -- undo and the state a change left ----------------------------------------------
def undo_domain(env, change: dict) -> None:
    with open(os.path.join(env.backup_dir, change["before"]), encoding="utf-8") as fh:
        xml = fh.read()
    env.conn().defineXML(xml)


def undo_network(env, change: dict) -> None:
    lv = _lv()
    before = change["before"]
    try:
        net = env.conn().networkLookupByName(change["name"])
    except lv.libvirtError:
        if before.get("defined"):
            raise ActionError(f"network {change['name']} no longer exists") from None
        return
    if not before.get("defined"):
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
        return
    if before.get("persistent", True) and bool(net.autostart()) != before.get("autostart", False):
        net.setAutostart(1 if before.get("autostart") else 0)
    if net.isActive() and not before.get("active"):
        net.destroy()
    elif not net.isActive() and before.get("active"):
        net.create()


def domain_state(env, change: dict) -> dict:
    xml = _secure_xml(env, change["name"])
    return {"kind": "domain", "name": change["name"], "xml_sha256": hashlib.sha256(xml.encode()).hexdigest()}


def network_state(env, change: dict) -> dict:
    return {"kind": "network", "name": change["name"], **_net_state(env, change["name"])}

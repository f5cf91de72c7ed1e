"""KVM acceleration: the /dev/kvm device and who may open it."""
from __future__ import annotations

from virtdoctor.api import (Auto, Fail, Pass, RemoveAcl, RunCommand, SetGroup, SetMode, Skip, WriteFile, check,
                            hookimpl, plan)

KVM_DEVICE = "/dev/kvm"
UDEV_RULE = "/etc/udev/rules.d/65-kvm.rules"
UDEV_RULE_TEXT = ('# written by virtdoctor (kvm-device-permission): QEMU\'s account reaches /dev/kvm\n'
                  'KERNEL=="kvm", GROUP="kvm", MODE="0660", OPTIONS+="static_node=kvm"\n')
UDEV_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")


def qemu_identity(facts):
    """(label, uid, gids, account) QEMU processes will have for this URI:
    qemu.conf user/group on qemu:///system, the calling user on session."""
    from virtdoctor.facts.uri import parse_uri

    uri = parse_uri(facts.resolved_uri) if not facts.offline else None
    if uri is not None and uri.path == "/session":
        acct = facts.account(facts.euid)
        gids = acct.groups if acct else frozenset()
        return (acct.name if acct else str(facts.euid)), facts.euid, gids, None
    qemu = facts.qemu_account()
    return qemu.label, qemu.uid, qemu.gids, qemu


def udev_rule_grants(facts) -> str | None:
    """The udev rule file that gives /dev/kvm a group and mode QEMU can use, if any."""
    for d in UDEV_DIRS:
        for name in facts.listdir(d):
            if not name.endswith(".rules"):
                continue
            text = facts.read_text(f"{d}/{name}") or ""
            for line in text.splitlines():
                if 'KERNEL=="kvm"' in line and 'GROUP="kvm"' in line and ('MODE="0660"' in line or 'MODE="0666"' in line):
                    return f"{d}/{name}"
    return None


@check("kvm-device-permission", scope="host", area="kvm", severity="error",
       title="QEMU's account can open /dev/kvm read-write")
def kvm_device_permission(facts):
    """Looks at mode, owner, group and POSIX ACL of /dev/kvm against the user
    and groups QEMU runs as (qemu.conf user/group, else the built-in default,
    with the user's supplementary groups).
    Why: else every KVM guest fails with "Could not access KVM kernel module:
    Permission denied" / "failed to initialize kvm: Permission denied".
    Fix safety: safe; group kvm, mode 0660, stray ACL removed, a udev rule so it
    survives reboot; no guest-visible change."""
    node = facts.stat(KVM_DEVICE)
    if node is None:
        return Skip("/dev/kvm is absent; kvm-device-missing reports that")
    label, uid, gids, qemu = qemu_identity(facts)
    if qemu is not None and qemu.account is None:
        return Skip(f"QEMU's user {qemu.user} does not exist; qemu-user-missing reports that")
    evidence = {"mode": node.mode_text, "owner": node.owner, "group": node.group, "acl": node.acl_text,
                "qemu": label, "qemu_groups": sorted(facts.accounts.group_name(g) for g in gids),
                "udev_rule": udev_rule_grants(facts)}
    if node.allowed(uid, gids, "rw"):
        return Pass(f"{label} can open /dev/kvm read-write ({node.owner}:{node.group} {node.mode_text})", evidence)
    why = f"{node.owner}:{node.group} {node.mode_text}"
    if node.acl_text:
        why += f", ACL {node.acl_text}"
    return Fail(f"{label} cannot open /dev/kvm read-write ({why}): KVM guests fail with "
                f"\"Could not access KVM kernel module: Permission denied\"", evidence)


@kvm_device_permission.fixer
def give_kvm_group_rw(finding, facts):
    label, uid, gids, qemu = qemu_identity(facts)
    kvm = facts.group("kvm")
    actions = []
    notes = []
    if kvm is None:
        return plan("Create the kvm group, put QEMU's user in it, then give it /dev/kvm", Auto.MANUAL,
                    RunCommand(["groupadd", "--system", "kvm"]),
                    RunCommand(["usermod", "-a", "-G", "kvm", qemu.user if qemu else label]))
    if kvm.gid not in gids:
        user = qemu.user if qemu else label
        actions.append(RunCommand(["usermod", "-a", "-G", "kvm", user], f"add {user} to group kvm",
                                  touches=("/etc/group", "/etc/gshadow")))
        notes.append(f"{user} is not in group kvm; running domains keep their old groups until restarted")
    node = facts.stat(KVM_DEVICE)
    if node is not None and node.acl_text:
        actions.append(RemoveAcl(KVM_DEVICE))
    actions += [SetGroup(KVM_DEVICE, "kvm"), SetMode(KVM_DEVICE, 0o660)]
    if not udev_rule_grants(facts):
        actions.append(WriteFile(UDEV_RULE, UDEV_RULE_TEXT, 0o644))
    else:
        notes.append(f"{udev_rule_grants(facts)} already sets group kvm and mode 0660 at boot; "
                     "something changed the node since")
    return plan("Give group kvm read-write on /dev/kvm (0660) and persist it with a udev rule",
                Auto.SAFE, *actions, notes=notes)


@hookimpl
def virtdoctor_checks():
    return [kvm_device_permission]

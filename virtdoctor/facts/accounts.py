"""Users and groups read from the root's own /etc/passwd and /etc/group (never
NSS of the machine running virtdoctor: with --root the two differ)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: frozenset[int]  # primary gid plus every group listing the user

    def label(self) -> str:
        return f"{self.name} (uid {self.uid})"


@dataclass
class Accounts:
    users: dict[str, Account]
    groups: dict[str, Group]

    @classmethod
    def load(cls, passwd: str, group: str) -> "Accounts":
        groups: dict[str, Group] = {}
        for line in group.splitlines():
            parts = line.split(":")
            if len(parts) < 4 or line.startswith("#"):
                continue
            try:
                gid = int(parts[2])
            except ValueError:
                continue
            groups[parts[0]] = Group(parts[0], gid, tuple(m for m in parts[3].split(",") if m))
        users: dict[str, Account] = {}
        for line in passwd.splitlines():
            parts = line.split(":")
            if len(parts) < 7 or line.startswith("#"):
                continue
            try:
                uid, gid = int(parts[2]), int(parts[3])
            except ValueError:
                continue
            supplementary = {g.gid for g in groups.values() if parts[0] in g.members}
            users[parts[0]] = Account(parts[0], uid, gid, parts[5], parts[6], frozenset({gid, *supplementary}))
        return cls(users, groups)

    def user(self, key: str | int) -> Account | None:
        if isinstance(key, int):
            return next((u for u in self.users.values() if u.uid == key), None)
        return self.users.get(key)

    def group(self, key: str | int) -> Group | None:
        if isinstance(key, int):
            return next((g for g in self.groups.values() if g.gid == key), None)
        return self.groups.get(key)

    def user_name(self, uid: int) -> str:
        u = self.user(uid)
        return u.name if u else str(uid)

    def group_name(self, gid: int) -> str:
        g = self.group(gid)
        return g.name if g else str(gid)


def parse_account_spec(accounts: Accounts, spec: str, *, kind: str):
    """qemu.conf's `user`/`group` take a name or `+N` for a numeric id (libvirt's
    virGetUserID/virGetGroupID). Returns the Account (kind "user") or the gid
    (kind "group"); None when it does not exist."""
    if kind == "user":
        if spec.startswith("+") and spec[1:].isdigit():
            uid = int(spec[1:])
            return accounts.user(uid) or Account(spec, uid, uid, "/", "", frozenset({uid}))
        return accounts.user(spec)
    if spec.startswith("+") and spec[1:].isdigit():
        return int(spec[1:])
    g = accounts.group(spec)
    return g.gid if g else None

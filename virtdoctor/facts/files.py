"""File metadata with POSIX ACLs, and access decided as the kernel would."""
from __future__ import annotations

import os
import stat as _stat
import struct
from dataclasses import dataclass

ACL_XATTR = "system.posix_acl_access"
# tags from <linux/posix_acl.h>
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_TAG_NAMES = {USER_OBJ: "user", USER: "user", GROUP_OBJ: "group", GROUP: "group", MASK: "mask", OTHER: "other"}
PERM = {"r": 4, "w": 2, "x": 1}


@dataclass(frozen=True)
class AclEntry:
    tag: int
    perm: int
    id: int | None  # uid/gid for named USER/GROUP entries

    def text(self, names: dict[tuple[int, int], str] | None = None) -> str:
        qual = "" if self.id is None else str(self.id)
        if names and self.id is not None:
            qual = names.get((self.tag, self.id), qual)
        bits = "".join(c if self.perm & v else "-" for c, v in PERM.items())
        return f"{_TAG_NAMES[self.tag]}:{qual}:{bits}"


def parse_acl_xattr(data: bytes) -> tuple[AclEntry, ...]:
    """Decode the kernel's posix_acl_xattr format: a u32 version (2), then
    (u16 tag, u16 perm, u32 id) entries, little-endian."""
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != 2 or (len(data) - 4) % 8:
        raise ValueError("not a POSIX ACL (version 2) xattr")
    entries = []
    for off in range(4, len(data), 8):
        tag, perm, ident = struct.unpack_from("<HHI", data, off)
        entries.append(AclEntry(tag, perm & 7, ident if tag in (USER, GROUP) else None))
    return tuple(entries)


def encode_acl_xattr(entries: tuple[AclEntry, ...] | list[AclEntry]) -> bytes:
    out = struct.pack("<I", 2)
    for e in entries:
        out += struct.pack("<HHI", e.tag, e.perm, 0xFFFFFFFF if e.id is None else e.id)
    return out


def read_acl(real_path: str) -> tuple[AclEntry, ...]:
    try:
        return parse_acl_xattr(os.getxattr(real_path, ACL_XATTR))
    except (OSError, ValueError):
        return ()  # no ACL, or a filesystem without xattrs: mode bits decide


@dataclass(frozen=True)
class FileInfo:
    path: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    rdev: int
    acl: tuple[AclEntry, ...]
    owner: str
    group: str

    @property
    def perms(self) -> int:
        return _stat.S_IMODE(self.mode)

    @property
    def mode_text(self) -> str:
        return f"{self.perms:04o}"

    @property
    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return _stat.S_ISREG(self.mode)

    @property
    def is_char_device(self) -> bool:
        return _stat.S_ISCHR(self.mode)

    @property
    def is_socket(self) -> bool:
        return _stat.S_ISSOCK(self.mode)

    @property
    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self.mode)

    @property
    def extended_acl(self) -> tuple[AclEntry, ...]:
        """Named user/group entries (and the mask): what `getfacl` shows beyond the mode."""
        return tuple(e for e in self.acl if e.tag in (USER, GROUP, MASK))

    @property
    def acl_text(self) -> str:
        return ",".join(e.text() for e in self.acl) if self.extended_acl else ""

    def allowed(self, uid: int | None, gids: frozenset[int] | set[int], want: str) -> bool:
        """Would a process with this uid and these groups get `want` ("r", "rw",
        "x", "rx"...)? The POSIX ACL access check algorithm (acl(5)); without an
        extended ACL it reduces to owner/group/other mode bits. uid 0 is allowed
        everything but execute on a file with no x bit at all."""
        need = sum(PERM[c] for c in want)
        if uid is None:
            return False
        if uid == 0:
            if need & 1 and not self.is_dir:
                return bool(self.perms & 0o111)
            return True
        return any(p & need == need for p in self._granted(uid, frozenset(gids)))

    def _granted(self, uid: int, gids: frozenset[int]) -> list[int]:
        """The permission sets one of which must hold all wanted bits."""
        return [p for p in self._candidates(uid, gids)]

    def _candidates(self, uid: int, gids: frozenset[int]):
        mode = self.perms
        # Linux consults the ACL only when the group class bits (the mask) are not
        # all zero (fs/namei.c acl_permission_check): with an empty mask the named
        # entries are ignored and the mode bits decide, as without an ACL.
        if not self.extended_acl or not mode & 0o070:
            if uid == self.uid:
                yield (mode >> 6) & 7
            elif self.gid in gids:
                yield (mode >> 3) & 7
            else:
                yield mode & 7
            return
        mask = next((e.perm for e in self.acl if e.tag == MASK), 7)
        if uid == self.uid:
            yield (mode >> 6) & 7
            return
        for e in self.acl:
            if e.tag == USER and e.id == uid:
                yield e.perm & mask
                return
        matched = [e.perm & mask for e in self.acl
                   if (e.tag == GROUP_OBJ and self.gid in gids) or (e.tag == GROUP and e.id in gids)]
        if matched:  # any one matching group entry holding all wanted bits grants access
            yield from matched
            return
        yield next((e.perm for e in self.acl if e.tag == OTHER), mode & 7)

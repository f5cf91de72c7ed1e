"""Probe KVM for real: open /dev/kvm, ask its API version, create a VM, and ask
which capabilities it offers (SMM). CPU flags alone lie in nested guests, so the
checks believe this probe first (DESIGN.md: "probe, don't guess")."""
from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

# ioctl numbers from <linux/kvm.h>: _IO(KVMIO=0xAE, nr)
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CAP_X86_SMM = 117
KVM_API_VERSION = 12


@dataclass(frozen=True)
class KvmProbe:
    device: str
    opened: bool
    error: str | None = None  # why it could not be opened or used
    api_version: int | None = None
    vm_created: bool = False
    smm: bool | None = None  # None: not asked (not x86, or no VM)

    @property
    def usable(self) -> bool:
        return self.opened and self.api_version == KVM_API_VERSION and self.vm_created


def probe_kvm(device: str = "/dev/kvm") -> KvmProbe:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmProbe(device, False, f"{os.strerror(exc.errno or errno.EIO)} ({device})")
    try:
        try:
            api = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        except OSError as exc:
            return KvmProbe(device, True, f"KVM_GET_API_VERSION failed: {exc.strerror}")
        try:
            vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        except OSError as exc:
            return KvmProbe(device, True, f"KVM_CREATE_VM failed: {exc.strerror}", api_version=api)
        try:
            smm = None
            if os.uname().machine in ("x86_64", "i686", "i386"):
                try:
                    smm = fcntl.ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_X86_SMM) > 0
                except OSError:
                    smm = False
        finally:
            os.close(vm)
        return KvmProbe(device, True, None, api_version=api, vm_created=True, smm=smm)
    finally:
        os.close(fd)

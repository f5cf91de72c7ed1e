"""The guest CPU as libvirt judges it on this host: virConnectCompareHypervisorCPU (what
`virsh hypervisor-cpu-compare` asks) for a domain's <cpu>, with QEMU's and KVM's view of the
host CPU for the domain's emulator, arch, machine and virt type. The CPU model list with its
`usable` flags comes from domcapabilities (HostFacts.domain_caps)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from virtdoctor.model import FactUnavailable


@dataclass(frozen=True)
class CpuComparison:
    compatible: bool
    message: str  # libvirt's text when incompatible ("the CPU is incompatible with host CPU: ...")

    @property
    def missing(self) -> list[str]:
        m = re.search(r"does not provide required features?: ([\w.,\- ]+)", self.message)
        return [f.strip() for f in m.group(1).split(",") if f.strip()] if m else []


def compare_cpu(facts, dom) -> CpuComparison:
    """Compare the domain's <cpu> with what this hypervisor offers. Recorded libvirt facts may
    carry real comparisons in `cpu_comparisons` ({domain name: (compatible, message)})."""
    from virtdoctor.domxml import serialise

    cpu = dom.tree.find("cpu")
    if cpu is None:
        raise FactUnavailable("the domain has no <cpu> element")
    lv = facts.libvirt
    recorded = getattr(lv, "cpu_comparisons", None)
    if recorded is not None:
        if dom.name not in recorded:
            raise FactUnavailable(f"no CPU comparison recorded for {dom.name}")
        ok, msg = recorded[dom.name]
        return CpuComparison(ok, msg)
    if not hasattr(lv, "call_rw"):
        raise FactUnavailable("these libvirt facts cannot compare CPUs")
    xml = serialise(cpu)

    def ask(conn):
        import libvirt

        try:
            res = conn.compareHypervisorCPU(dom.emulator, dom.arch or None, dom.machine or None,
                                            dom.virt_type or None, xml,
                                            libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
            return CpuComparison(res != libvirt.VIR_CPU_COMPARE_INCOMPATIBLE, "")
        except libvirt.libvirtError as exc:
            msg = exc.get_error_message() or str(exc)
            if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
                return CpuComparison(False, msg)
            raise FactUnavailable(f"virConnectCompareHypervisorCPU: {msg}") from exc

    # libvirt 9.0 refuses this read-only question on a read-only connection
    return lv.call_rw("virConnectCompareHypervisorCPU", ask)

"""Guest firmware: UEFI descriptors and files, secure boot and SMM, UEFI vs ACPI."""
from __future__ import annotations

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, RunCommand, Severity, Skip, check, element,
                            fwfacts, hookimpl, plan, planner, redefine_plan)

X86 = fwfacts.X86
SMM_TEXT = "System Management Mode not supported by this hypervisor."


def host_needed(facts, what: str) -> None:
    """Domain checks that judge against this host's files skip under --offline."""
    if facts.offline:
        raise FactUnavailable(f"--offline: {what} needs this host's files and libvirt")


def _domain_arch(facts, dom) -> str:
    if dom.arch:
        return dom.arch
    arch, _ = fwfacts.host_arch(facts)
    return arch or ""


def _uefi_package_cmd(arch: str) -> RunCommand:
    pkg = fwfacts.UEFI_PACKAGES.get(arch, "ovmf")
    return RunCommand(["apt-get", "install", "-y", pkg], f"install {pkg} ({fwfacts.UEFI_NAMES.get(arch, 'UEFI')} "
                      f"firmware and its descriptors; Fedora/RHEL: edk2-ovmf / edk2-aarch64)")


# -- uefi-firmware-missing ----------------------------------------------------------
@check("uefi-firmware-missing", scope="host", area="firmware", severity="warning",
       title="UEFI firmware and its descriptors are installed for the guest arches", needs=("libvirt-installed",), plans=True)
def uefi_firmware_missing_host(facts):
    """Looks at the firmware descriptors (/usr/share/qemu/firmware, overridden
    or masked by /etc/qemu/firmware), the files they name, and qemu.conf's
    `nvram = [...]` list, for the host arch (OVMF on x86_64, AAVMF on aarch64)
    and every other x86_64/aarch64 guest the capabilities offer.
    Why: without them EFI guests fail with "operation failed: Unable to find
    any firmware to satisfy 'efi'" (virt-install: "Did not find any UEFI binary
    path for arch 'x86_64'"); a descriptor naming a missing file is still
    chosen and QEMU cannot open it; an unparsable one breaks every lookup.
    Fix safety: manual (install ovmf / qemu-efi-aarch64, fix the list)."""
    arch, how = fwfacts.host_arch(facts)
    if arch is None:
        return Skip("cannot tell the host arch: libvirt not reachable and no qemu-system-* installed")
    arches = [arch] if arch in fwfacts.UEFI_NAMES else []
    try:
        for guest_arch, _emu in facts.libvirt.guest_emulators():
            if guest_arch in ("x86_64", "aarch64") and guest_arch not in arches:
                arches.append(guest_arch)
    except FactUnavailable:
        pass
    descs = fwfacts.firmware_descriptors(facts)
    results = []
    for d in descs:
        if d.error:
            results.append(Fail(f"{d.path}: {d.error}: libvirt fails every firmware lookup (all EFI guests) "
                                f"until it is fixed or removed", {"descriptor": d.path, "error": d.error},
                                key=d.path, severity=Severity.ERROR,
                                plan=plan("Fix or remove the broken firmware descriptor", Auto.MANUAL,
                                          notes=[f"{d.path}: {d.error}"])))
    for a in arches:
        cands = [d for d in descs if not d.error and "uefi" in d.interfaces and a in d.arches()]
        missing = [(d.path, role, p) for d in cands for role, p in d.files() if facts.stat(p) is None]
        evidence = {"arch": a, "arch_from": how if a == arch else "libvirt capabilities",
                    "descriptors": [d.path for d in cands], "missing_files": [f"{p} ({role} of {dp})" for dp, role, p in missing],
                    "masked": fwfacts.masked_descriptors(facts)}
        if missing:
            dp, role, p = missing[0]
            results.append(Fail(f"{dp} names {role} {p}, which does not exist: libvirt still picks this "
                                f"descriptor for {a} EFI guests and QEMU cannot open the file",
                                evidence, key=a, severity=Severity.ERROR, plan=reinstall_uefi_firmware(a)))
        elif not cands:
            name = fwfacts.UEFI_NAMES.get(a, "UEFI")
            results.append(Fail(f"no UEFI firmware descriptor for {a} ({name} not installed): {a} EFI guests fail "
                                f"with \"Unable to find any firmware to satisfy 'efi'\"", evidence, key=a,
                                plan=install_uefi_firmware(a)))
        else:
            results.append(Pass(f"{a}: {len(cands)} UEFI descriptor(s), first {cands[0].name} "
                                f"({cands[0].executable})", evidence, key=a))
    have_descs = any(not d.error for d in descs)
    for code, nv, entry in fwfacts.nvram_list(facts):
        ev = {"entry": entry, "descriptors_present": have_descs}
        if nv is None:
            results.append(Fail(f"qemu.conf nvram entry \"{entry}\" is not CODE:VARS", ev, key=f"nvram:{entry}",
                                plan=STALE_NVRAM_PLAN))
            continue
        gone = [p for p in (code, nv) if facts.stat(p) is None]
        if gone:
            results.append(Fail(f"qemu.conf nvram entry \"{entry}\" names {', '.join(gone)}, which does not exist"
                                + ("" if have_descs else ": EFI guests using it cannot get their variable store"),
                                ev, key=f"nvram:{entry}", plan=STALE_NVRAM_PLAN))
        else:
            results.append(Pass(f"qemu.conf nvram entry {entry} exists", ev, key=f"nvram:{entry}"))
    if not results:
        return Pass(f"host arch {arch} has no UEFI firmware to check")
    return results


@planner
def install_uefi_firmware(arch: str):
    return plan(f"Install the {arch} UEFI firmware package", Auto.MANUAL, _uefi_package_cmd(arch))


@planner
def reinstall_uefi_firmware(arch: str):
    return plan(f"Reinstall the {arch} UEFI firmware package so its descriptors and files agree", Auto.MANUAL,
                RunCommand(["apt-get", "install", "--reinstall", "-y", fwfacts.UEFI_PACKAGES.get(arch, "ovmf")]))


STALE_NVRAM_PLAN = plan("Correct or remove the stale entry of qemu.conf's nvram list", Auto.MANUAL,
                        notes=["edit /etc/libvirt/qemu.conf, then restart libvirtd"])


def _missing(facts, path: str | None) -> bool:
    return bool(path) and facts.stat(path) is None


@check("uefi-firmware-missing", scope="domain", area="firmware", severity="error",
       title="The domain's UEFI firmware can be found and its files exist", plans=True)
def uefi_firmware_missing(facts, dom):
    """Looks at `<os firmware='efi'>` (simulating libvirt's descriptor choice
    for the arch, machine and `<firmware><feature>`s), a manual `<loader>`, and
    `<nvram template>` / the variable store a pflash loader needs.
    Why: "operation failed: Unable to find any firmware to satisfy 'efi'"
    (virt-install: "Did not find any UEFI binary path for arch ..."),
    "operation failed: unable to find any master var store for loader: PATH",
    or QEMU unable to open a loader that is gone.
    Fix safety: manual (install ovmf / qemu-efi-aarch64, correct the paths)."""
    fw = fwfacts.os_firmware(dom)
    if not fw.is_efi and not fw.loader_path and not fw.nvram_template:
        return Pass("no UEFI firmware requested")
    host_needed(facts, "finding the domain's firmware")
    fw.arch = fw.arch or _domain_arch(facts, dom)
    ev = {"arch": fw.arch, "machine": fw.machine, "firmware": fw.firmware or None, "loader": fw.loader_path,
          "nvram_template": fw.nvram_template}
    if fw.firmware == "efi":
        sel = fwfacts.select_firmware(facts, fw)
        tried = [f"{p}: {why}" for p, why in sel.tried]
        ev.update(canonical_machine=sel.machine, tried=tried)
        if sel.broken:
            b = sel.broken[0]
            return Fail(f"firmware descriptor {b.path} is unusable ({b.error}): libvirt cannot select any firmware",
                        ev, plan=uefi_firmware_advice(facts, dom, fw.arch, tried))
        if sel.chosen is None:
            feats = ", ".join(f"{k}={v}" for k, v in fw.fw_features.items())
            return Fail(f"no firmware descriptor fits {fw.arch} {sel.machine}" + (f" with {feats}" if feats else "")
                        + f": start fails with \"operation failed: Unable to find any firmware to satisfy 'efi'\" "
                        f"(virt-install: \"Did not find any UEFI binary path for arch '{fw.arch}'\")", ev, plan=uefi_firmware_advice(facts, dom, fw.arch, tried))
        ev["chosen"] = sel.chosen.path
        for role, p in sel.chosen.files():
            if _missing(facts, p):
                return Fail(f"libvirt picks {sel.chosen.path}, whose {role} {p} does not exist", ev, plan=uefi_firmware_advice(facts, dom, fw.arch, tried))
        if _missing(facts, fw.nvram_template):
            return Fail(f"<nvram template='{fw.nvram_template}'> does not exist", ev, plan=uefi_firmware_advice(facts, dom, fw.arch, tried))
        return Pass(f"libvirt picks {sel.chosen.name} ({sel.chosen.executable})", ev)
    if fw.loader_path and _missing(facts, fw.loader_path):
        return Fail(f"<loader> {fw.loader_path} does not exist: QEMU cannot open it", ev, plan=uefi_firmware_advice(facts, dom, fw.arch))
    if _missing(facts, fw.nvram_template):
        return Fail(f"<nvram template='{fw.nvram_template}'> does not exist", ev, plan=uefi_firmware_advice(facts, dom, fw.arch))
    if fw.loader_type == "pflash" and fw.loader_path and (fw.nvram_path or fw.loader_readonly == "yes"):
        nvram = fw.nvram_path or (fwfacts.default_nvram_path(dom.name) if dom.name else None)
        ev["nvram"] = nvram
        if fw.nvram_template or (nvram and facts.stat(nvram) is not None):
            return Pass(f"loader {fw.loader_path} and its variable store are in place", ev)
        desc = fwfacts.descriptor_for_loader(facts, fw.loader_path)
        if desc is not None and desc.nvram_template and not _missing(facts, desc.nvram_template):
            return Pass(f"the variable store is created from {desc.nvram_template} ({desc.name})", ev)
        for code, nv, _entry in fwfacts.nvram_list(facts):
            if code == fw.loader_path and nv and not _missing(facts, nv):
                return Pass(f"the variable store is created from {nv} (qemu.conf nvram)", ev)
        return Fail(f"no template for {nvram or 'the variable store'}: start fails with \"operation failed: "
                    f"unable to find any master var store for loader: {fw.loader_path}\"", ev,
                    plan=uefi_firmware_advice(facts, dom, fw.arch, var_store=True))
    return Pass(f"loader {fw.loader_path} exists" if fw.loader_path else "firmware files exist", ev)


@planner
def uefi_firmware_advice(facts, dom, arch: str | None, tried=(), var_store: bool = False):
    arch = arch or "x86_64"
    descs = [d for d in fwfacts.firmware_descriptors(facts)
             if not d.error and "uefi" in d.interfaces and arch in d.arches()]
    if not descs:
        return plan(f"Install the {arch} UEFI firmware, then start {dom.label} again", Auto.MANUAL,
                    _uefi_package_cmd(arch))
    notes = []
    if tried:
        notes.append("descriptors tried: " + "; ".join(tried))
    if var_store:
        notes.append("add template='...VARS...' to <nvram>, or use <os firmware='efi'> and drop the <loader>")
    return plan("Correct the domain's firmware request or paths (virsh edit), or reinstall the firmware",
                Auto.MANUAL, RunCommand(["virsh", "edit", dom.name or dom.label]), notes=notes)


# -- secure-boot-requires-smm -------------------------------------------------------
@check("secure-boot-requires-smm", scope="host", area="firmware", severity="warning",
       title="KVM offers SMM, which secure-boot firmware needs")
def secure_boot_requires_smm_host(facts):
    """Looks at the KVM probe (KVM_CAP_X86_SMM on a VM it creates) and at the
    secure-boot descriptors libvirt may pick for q35 EFI guests.
    Why: without SMM, KVM guests on secure-boot OVMF die with "System
    Management Mode not supported by this hypervisor."; with Debian's
    descriptors a plain `<os firmware='efi'>` q35 guest gets the secure-boot
    build unless it asks for `<feature enabled='no' name='secure-boot'/>`.
    Fix safety: none on the host (nested/cloud KVM); per domain, see the
    domain check's fix."""
    probe = facts.kvm_probe()
    if not probe.usable:
        return Skip(f"KVM is not usable here ({probe.error or 'no VM created'}); the kvm checks report it")
    if probe.smm is None:
        return Skip("not an x86 host: SMM does not apply")
    descs = fwfacts.firmware_descriptors(facts)
    smm_descs = [d for d in descs if not d.error and d.requires_smm]
    ev = {"kvm_smm": probe.smm, "requires_smm_descriptors": [d.path for d in smm_descs]}
    if probe.smm:
        return Pass("KVM offers SMM: secure-boot firmware can run", ev)
    if not smm_descs:
        return Pass("KVM has no SMM, but no installed firmware requires it", ev)
    fw = fwfacts.OsFirmware(arch="x86_64", machine="q35", virt_type="kvm", firmware="efi")
    sel = fwfacts.select_firmware(facts, fw)
    ev["default_q35_efi_choice"] = sel.chosen.path if sel.chosen else None
    if sel.chosen is not None and sel.chosen.requires_smm:
        return Fail(f"KVM on this host has no SMM, and <os firmware='efi'> on q35 picks {sel.chosen.name} "
                    f"(secure boot, requires-smm): such KVM guests fail with \"{SMM_TEXT}\" unless they ask for "
                    f"<feature enabled='no' name='secure-boot'/>", ev)
    return Fail(f"KVM on this host has no SMM: secure-boot firmware ({smm_descs[0].name}...) fails under KVM "
                f"with \"{SMM_TEXT}\"", ev)


def _smm_need(facts, dom, fw) -> tuple[bool, str, object]:
    """(needs SMM, why, libvirt's chosen descriptor or None)."""
    if fw.firmware == "efi":
        sel = fwfacts.select_firmware(facts, fw)
        if sel.chosen is not None and sel.chosen.requires_smm:
            return True, f"libvirt picks {sel.chosen.name} (requires-smm)", sel.chosen
        if fw.smm == "on":
            return True, "<smm state='on'/>", sel.chosen
        return False, (f"libvirt picks {sel.chosen.name}" if sel.chosen else "no descriptor fits"), sel.chosen
    if fw.loader_secure == "yes":
        return True, "<loader secure='yes'>", None
    desc = fwfacts.descriptor_for_loader(facts, fw.loader_path) if fw.loader_path else None
    if desc is not None and desc.requires_smm:
        return True, f"loader {fw.loader_path} is {desc.name} (requires-smm)", desc
    if fwfacts.looks_secure_boot(fw.loader_path):
        return True, f"loader {fw.loader_path} is a secure-boot (SMM-only) build", desc
    if fw.smm == "on":
        return True, "<smm state='on'/>", desc
    return False, "firmware without secure boot", desc


@check("secure-boot-requires-smm", scope="domain", area="firmware", severity="error",
       title="Secure-boot firmware has q35, SMM on, and a host whose KVM offers SMM", plans=True)
def secure_boot_requires_smm(facts, dom):
    """Looks at the firmware the domain gets (autoselected descriptor features
    secure-boot / requires-smm, `<loader secure='yes'>`, *.secboot.fd /
    *.ms.fd loaders), its machine type, `<features><smm>`, and whether this
    host's KVM offers SMM.
    Why: "Secure boot is supported with q35 machine types only", "Secure boot
    requires SMM feature enabled", "domain has SMM turned off but chosen
    firmware requires it", and under KVM without SMM QEMU stops with "System
    Management Mode not supported by this hypervisor."
    Fix safety: unsafe (guest-visible): SMM on for q35 when the host has SMM,
    else firmware without secure boot; applies at the next boot."""
    fw = fwfacts.os_firmware(dom)
    if not fw.is_efi and fw.loader_secure != "yes":
        return Pass("no UEFI firmware: secure boot does not apply")
    ev = {"machine": fw.machine, "smm": fw.smm or None, "virt_type": fw.virt_type, "loader": fw.loader_path,
          "loader_secure": fw.loader_secure or None}
    if fw.loader_secure == "yes":
        if fw.arch and fw.arch != "x86_64":
            return Fail("unsupported configuration: Secure boot is supported for x86_64 architecture only", ev, plan=secure_boot_smm_fix(facts, dom))
        if not fwfacts.is_q35(fw.machine):
            return Fail("unsupported configuration: Secure boot is supported with q35 machine types only "
                        f"(machine {fw.machine or 'default (pc)'})", ev, plan=secure_boot_smm_fix(facts, dom))
        if fw.smm != "on" and fw.firmware != "efi":  # autoselection turns SMM on itself
            return Fail("unsupported configuration: Secure boot requires SMM feature enabled "
                        "(<features><smm state='on'/></features> is missing)", ev, plan=secure_boot_smm_fix(facts, dom))
    host_needed(facts, "judging SMM against this host's firmware and KVM")
    fw.arch = fw.arch or _domain_arch(facts, dom)
    needs, why, desc = _smm_need(facts, dom, fw)
    ev["needs_smm"] = why
    if fw.firmware == "efi" and desc is not None and desc.requires_smm and fw.smm == "off":
        return Fail(f"Requested operation is not valid: domain has SMM turned off but chosen firmware requires it "
                    f"({desc.name})", ev, plan=secure_boot_smm_fix(facts, dom))
    if not needs:
        return Pass(f"no SMM needed: {why}", ev)
    if fw.virt_type != "kvm":
        return Pass(f"SMM needed ({why}); TCG emulates it", ev)
    probe = facts.kvm_probe()
    ev["host_kvm_smm"] = probe.smm
    if probe.smm is False:
        return Fail(f"{why}, but this host's KVM has no SMM: QEMU stops with \"{SMM_TEXT}\"", ev, plan=secure_boot_smm_fix(facts, dom))
    return Pass(f"SMM needed ({why}) and KVM offers it", ev)


def _features(root):
    feats = root.find("features")
    if feats is None:
        feats = element("features")
        os_el = root.find("os")
        anchor = os_el if os_el is not None else root.find("vcpu")
        if anchor is not None:
            anchor.addnext(feats)
        else:
            root.append(feats)
        feats.tail = anchor.tail if anchor is not None else None
    return feats


def _append(parent, tag: str):
    """A new last child indented like its siblings."""
    child = element(tag)
    parent.append(child)
    siblings = list(parent)[:-1]
    if siblings:
        child.tail = siblings[-1].tail
        siblings[-1].tail = parent.text
    return child


def _set_fw_feature(os_el, name: str, enabled: str) -> None:
    fw_el = os_el.find("firmware")
    if fw_el is None:
        fw_el = element("firmware")
        os_el.append(fw_el)
        t = os_el.find("type")
        if t is not None:
            os_el.remove(fw_el)
            t.addnext(fw_el)
    feat = next((f for f in fw_el.iterfind("feature") if f.get("name") == name), None)
    if feat is None:
        feat = _append(fw_el, "feature")
    feat.set("enabled", enabled)
    feat.set("name", name)


@planner
def secure_boot_smm_fix(facts, dom):
    if dom.info is None or not dom.name:
        return None  # not a defined domain: nothing to redefine
    fw = fwfacts.os_firmware(dom)
    fw.arch = fw.arch or _domain_arch(facts, dom)
    try:
        host_smm = facts.kvm_probe().smm
    except FactUnavailable:
        host_smm = None
    smm_ok = fw.virt_type != "kvm" or host_smm is True
    notes: list[str] = []  # redefine_plan adds the next-boot note for a running domain
    if smm_ok and fwfacts.is_q35(fw.machine):
        def edit(d):
            feats = _features(d.root)
            smm = feats.find("smm")
            if smm is None:
                smm = _append(feats, "smm")
            smm.attrib.clear()
            smm.set("state", "on")
            return f"Turn SMM on for {dom.name} (q35, secure-boot firmware)"
    else:
        plain = None
        if fw.firmware != "efi":
            if fw.loader_path is None:
                return None
            machine = fwfacts.canonical_machine(facts, fw.arch, fw.machine, fw.virt_type)
            plain = next((d for d in fwfacts.firmware_descriptors(facts)
                          if not d.error and "uefi" in d.interfaces and d.device == "flash" and not d.requires_smm
                          and d.matches(fw.arch, machine) and not _missing(facts, d.executable)), None)
            if plain is None:
                return None
            notes.append(f"loader {fw.loader_path} -> {plain.executable} ({plain.name})")
        notes.append("the guest loses secure boot; an existing NVRAM file is kept (same OVMF varstore format)")

        def edit(d):
            root = d.root
            os_el = root.find("os")
            loader = os_el.find("loader")
            if plain is None:  # firmware='efi': ask for a firmware without secure boot
                _set_fw_feature(os_el, "secure-boot", "no")
                _set_fw_feature(os_el, "enrolled-keys", "no")
                if loader is not None:
                    if fwfacts.looks_secure_boot((loader.text or "").strip()):
                        os_el.remove(loader)
                    else:
                        loader.attrib.pop("secure", None)
            else:
                loader.text = plain.executable
                loader.attrib.pop("secure", None)
                nvram = os_el.find("nvram")
                if nvram is not None and plain.nvram_template:
                    nvram.set("template", plain.nvram_template)
            if fw.virt_type == "kvm" and host_smm is False:
                feats = root.find("features")
                smm = feats.find("smm") if feats is not None else None
                if smm is not None:
                    feats.remove(smm)
            return (f"Give {dom.name} UEFI firmware without secure boot"
                    + (" (this host's KVM has no SMM)" if host_smm is False else ""))
    return redefine_plan(dom, edit, notes=notes)


# -- uefi-requires-acpi / acpi-requires-uefi ------------------------------------------
@check("uefi-requires-acpi", scope="domain", area="firmware", severity="error",
       title="x86 UEFI guests have ACPI on", plans=True)
def uefi_requires_acpi(facts, dom):
    """Looks at x86 domains with UEFI (`<os firmware='efi'>` or a pflash
    `<loader>`) and `<features><acpi/>`.
    Why: libvirt refuses to define or start them: "unsupported configuration:
    UEFI requires ACPI on this architecture".
    Fix safety: unsafe (guest-visible): adds <acpi/>; applies at the next boot."""
    fw = fwfacts.os_firmware(dom)
    arch = fw.arch or _domain_arch(facts, dom)
    if arch not in X86:
        return Pass(f"{arch or 'unknown arch'}: not x86")
    if not (fw.firmware == "efi" or fw.old_style_uefi):
        return Pass("not UEFI")
    ev = {"arch": arch, "firmware": fw.firmware or None, "loader_type": fw.loader_type or None, "acpi": fw.acpi or None}
    if fw.acpi == "on":
        return Pass("UEFI with ACPI", ev)
    return Fail("x86 UEFI guest without <acpi/>: libvirt refuses it with \"unsupported configuration: "
                "UEFI requires ACPI on this architecture\"", ev, plan=add_acpi(facts, dom))


@planner
def add_acpi(facts, dom):
    if dom.info is None or not dom.name:
        return None

    def edit(d):
        feats = _features(d.root)
        acpi = feats.find("acpi")
        if acpi is None:
            acpi = element("acpi")
            if len(feats):
                acpi.tail = feats.text
            feats.insert(0, acpi)
        acpi.attrib.clear()
        return f"Add <features><acpi/></features> to {dom.name}"

    notes: list[str] = []  # redefine_plan adds the next-boot note for a running domain
    return redefine_plan(dom, edit, notes=notes)


@check("acpi-requires-uefi", scope="domain", area="firmware", severity="error",
       title="aarch64 guests with ACPI use UEFI", plans=True)
def acpi_requires_uefi(facts, dom):
    """Looks at aarch64 domains with `<features><acpi/>` and their firmware.
    Why: libvirt refuses ACPI without UEFI there: "unsupported configuration:
    ACPI requires UEFI on this architecture".
    Fix safety: unsafe (guest-visible): UEFI when AAVMF is installed, else
    ACPI off (the guest gets a device tree); applies at the next boot."""
    fw = fwfacts.os_firmware(dom)
    arch = fw.arch or _domain_arch(facts, dom)
    if arch != "aarch64":
        return Pass(f"{arch or 'unknown arch'}: not aarch64")
    ev = {"arch": arch, "acpi": fw.acpi or None, "firmware": fw.firmware or None, "loader_type": fw.loader_type or None}
    if fw.acpi != "on":
        return Pass("ACPI off", ev)
    if fw.firmware == "efi" or fw.old_style_uefi:
        return Pass("ACPI with UEFI", ev)
    return Fail("aarch64 guest with ACPI but no UEFI: libvirt refuses it with \"unsupported configuration: "
                "ACPI requires UEFI on this architecture\"", ev, plan=acpi_uefi_fix(facts, dom))


@planner
def acpi_uefi_fix(facts, dom):
    if dom.info is None or not dom.name:
        return None
    fw = fwfacts.os_firmware(dom)
    fw.firmware = "efi"
    fw.arch = "aarch64"
    try:
        chosen = fwfacts.select_firmware(facts, fw).chosen if not facts.offline else None
    except FactUnavailable:
        chosen = None
    use_efi = chosen is not None and fw.loader_path is None

    def edit(d):
        if use_efi:
            d.root.find("os").set("firmware", "efi")
            return f"Boot {dom.name} with UEFI ({chosen.name}) and keep ACPI"
        feats = d.root.find("features")
        feats.remove(feats.find("acpi"))
        return f"Turn ACPI off for {dom.name} (no aarch64 UEFI firmware here): the guest gets a device tree"

    notes: list[str] = []  # redefine_plan adds the next-boot note for a running domain
    return redefine_plan(dom, edit, notes=notes)


@hookimpl
def virtdoctor_checks():
    return [uefi_firmware_missing_host, uefi_firmware_missing, secure_boot_requires_smm_host,
            secure_boot_requires_smm, uefi_requires_acpi, acpi_requires_uefi]

"""Guest CPU and machine type against this host: custom models QEMU does not know, required
features the host lacks (libvirt's own comparison), <topology> against <vcpu>, nested
virtualisation, and versioned machine types this QEMU does not offer."""
from __future__ import annotations

import re

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, RunCommand, Skip, check, cpufacts, hookimpl, plan,
                            platformfacts, redefine_plan, remove_element)

SHOWN = 8


def _cpu_mode(cpu) -> str:
    if cpu is None:
        return ""
    return cpu.get("mode") or ("custom" if cpu.find("model") is not None else "")


def _custom_models(caps) -> dict[str, str] | None:
    mode = caps.find("cpu/mode[@name='custom']")
    if mode is None or mode.get("supported") == "no":
        return None
    return {m.text.strip(): m.get("usable", "unknown") for m in mode.iterfind("model") if m.text}


def _host_model_supported(caps) -> bool:
    mode = caps.find("cpu/mode[@name='host-model']")
    return mode is not None and mode.get("supported") == "yes"


def _to_host_model(keep=("topology", "numa", "cache")):
    def edit(copy):
        cpu = copy.tree.find("cpu")
        for child in list(cpu):
            if child.tag not in keep:
                remove_element(child)
        for attr in ("match", "check"):
            cpu.attrib.pop(attr, None)
        cpu.set("mode", "host-model")
        return "Use the host-model CPU (libvirt expands it to this host's CPU at start)"
    return edit


# -- cpu-model-unknown ------------------------------------------------------------------------
@check("cpu-model-unknown", scope="domain", area="cpu", severity="error", plans=True,
       title="The domain's CPU model is one this QEMU knows")
def cpu_model_unknown(facts, dom):
    """Looks at /domain/cpu/model against domcapabilities' custom CPU model list for the
    domain's emulator, arch, machine and virt type.
    Why: a typo, a model only a newer QEMU has, or a distribution-specific name fails the start
    ("Unknown CPU model X" / "CPU model X is not supported by hypervisor").
    Fix: unsafe (guest-visible CPU); host-model, which libvirt expands to this host's CPU."""
    cpu = dom.tree.find("cpu")
    model = (cpu.findtext("model") or "").strip() if cpu is not None else ""
    if _cpu_mode(cpu) != "custom" or not model:
        return Pass("no custom CPU model")
    caps = facts.domain_caps(dom)
    models = _custom_models(caps)
    if models is None:
        return Skip("domcapabilities list no custom CPU models for this emulator and machine")
    if model in models:
        return Pass(f"CPU model {model} is known to this QEMU (usable: {models[model]})")
    close = sorted(m for m in models if m.lower().startswith(model.lower()[:4]))[:SHOWN]
    evidence = {"model": model, "fallback": cpu.find("model").get("fallback", "allow"), "similar": close}
    fix = redefine_plan(dom, _to_host_model(), auto=Auto.UNSAFE,
                        notes=[f"or pick a listed model: virsh domcapabilities --virttype {dom.virt_type or 'kvm'}"
                               + (f" (similar: {', '.join(close)})" if close else "")]) \
        if _host_model_supported(caps) else None
    return Fail(f"CPU model {model} is not one this QEMU offers ({len(models)} models known"
                + (f"; similar: {', '.join(close)}" if close else "") + "): the start fails with "
                f"\"Unknown CPU model {model}\"", evidence, plan=fix)


# -- cpu-incompatible-host --------------------------------------------------------------------
@check("cpu-incompatible-host", scope="domain", area="cpu", severity="error", plans=True,
       title="This host provides the CPU features the domain requires")
def cpu_incompatible_host(facts, dom):
    """Compares the domain's custom <cpu> (model and `require`d features) with this hypervisor's
    CPU through libvirt (virConnectCompareHypervisorCPU, as `virsh hypervisor-cpu-compare`).
    Why: after a microcode/kernel update (TSX removed), XML from a newer host, or on a nested
    host, the start fails: "the CPU is incompatible with host CPU: Host CPU does not provide
    required features: hle, rtm".
    Fix: unsafe (guest-visible); drop the missing required features, or host-model when the
    model itself is beyond this host."""
    cpu = dom.tree.find("cpu")
    if _cpu_mode(cpu) != "custom":
        return Pass(f"CPU mode {_cpu_mode(cpu) or 'default'}: nothing to compare")
    model = (cpu.findtext("model") or "").strip()
    if model:
        models = _custom_models(facts.domain_caps(dom)) or {}
        if models and model not in models:
            return Skip(f"CPU model {model} is unknown here; cpu-model-unknown reports it")
    result = cpufacts.compare_cpu(facts, dom)
    if result.compatible:
        return Pass("libvirt finds the domain's CPU compatible with this host")
    missing = result.missing
    explicit = [f.get("name") for f in cpu.iterfind("feature") if f.get("policy") in ("require", "force")]
    drop = [m for m in missing if m in explicit]
    evidence = {"message": result.message, "missing": missing, "model": model}

    def edit(copy):
        c = copy.tree.find("cpu")
        for f in list(c.iterfind("feature")):
            if f.get("name") in drop and f.get("policy") in ("require", "force"):
                remove_element(f)
        return f"Stop requiring {', '.join(drop)}, which this host lacks"

    if drop and len(drop) == len(missing):
        fix = redefine_plan(dom, edit, auto=Auto.UNSAFE, notes=["the guest loses these CPU features"])
    else:
        fix = redefine_plan(dom, _to_host_model(), auto=Auto.UNSAFE,
                            notes=[f"the model {model} itself needs features this host lacks"])
    return Fail(f"{result.message or 'the CPU is incompatible with host CPU'}: the domain cannot start here",
                evidence, plan=fix)


# -- cpu-topology-mismatch --------------------------------------------------------------------
def _int(text, default=None):
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return default


@check("cpu-topology-mismatch", scope="domain", area="cpu", severity="error", plans=True,
       title="<cpu><topology> multiplies out to the maximum vCPU count")
def cpu_topology_mismatch(facts, dom):
    """Looks at sockets x dies x cores x threads of /domain/cpu/topology against the maximum
    vCPU count (/domain/vcpu).
    Why: someone changed <vcpu> but not the topology (or the reverse); define refuses it ("CPU
    topology doesn't match maximum vcpu count"), a stored config fails at start.
    Fix: unsafe (guest-visible); keep sockets, dies and threads, recompute cores (or one core
    per socket when that does not divide)."""
    topo = dom.tree.find("cpu/topology")
    if topo is None:
        return Pass("no <topology>: QEMU derives it from <vcpu>")
    vcpus = _int(dom.tree.findtext("vcpu"), 1)
    parts = {k: _int(topo.get(k), 1) for k in ("sockets", "dies", "cores", "threads")}
    if any(v is None or v < 1 for v in parts.values()):
        return Fail(f"<topology> has a non-positive or non-numeric value: {dict(topo.attrib)}", {"topology": dict(topo.attrib)})
    product = parts["sockets"] * parts["dies"] * parts["cores"] * parts["threads"]
    evidence = {"vcpus": vcpus, "topology": parts, "product": product}
    if product == vcpus:
        return Pass(f"topology {parts['sockets']}x{parts['dies']}x{parts['cores']}x{parts['threads']} = {vcpus} vCPUs",
                    evidence)
    per = parts["sockets"] * parts["dies"] * parts["threads"]
    new = dict(parts)
    if vcpus % per == 0:
        new["cores"] = vcpus // per
    else:
        new = {"sockets": vcpus, "dies": 1, "cores": 1, "threads": 1}

    def edit(copy):
        t = copy.tree.find("cpu/topology")
        for k, v in new.items():
            if k == "dies" and t.get("dies") is None and v == 1:
                continue
            t.set(k, str(v))
        return f"Set <topology> to sockets={new['sockets']} cores={new['cores']} threads={new['threads']} ({vcpus} vCPUs)"

    return Fail(f"<topology> gives {product} vCPUs (sockets {parts['sockets']} x dies {parts['dies']} x cores "
                f"{parts['cores']} x threads {parts['threads']}) but <vcpu> is {vcpus}: \"CPU topology doesn't match "
                "maximum vcpu count\"", evidence, plan=redefine_plan(dom, edit, auto=Auto.UNSAFE))


# -- nested-virt-disabled ---------------------------------------------------------------------
def _nested(facts) -> dict:
    out = {}
    for mod in ("kvm_intel", "kvm_amd"):
        try:
            val = facts.read_text(f"/sys/module/{mod}/parameters/nested")
        except Exception:
            val = None
        if val is not None:
            out[mod] = val.strip() in ("Y", "1")
    return out


def _cpu_flags(facts) -> set[str] | None:
    try:
        flags = platformfacts.cpuinfo(facts).flags  # the facts layer's one /proc/cpuinfo parser
    except Exception:
        return None
    return set(flags)


def _kvm_usable(facts) -> bool | None:
    if not facts.exists("/dev/kvm"):
        return False
    try:
        return bool(facts.kvm_probe().usable)
    except Exception:
        return None


@check("nested-virt-disabled", scope="host", area="cpu", severity="warning", plans=True,
       title="Nested virtualisation works where it is needed")
def nested_virt_disabled_host(facts):
    """Looks at the CPU flags (vmx/svm, `hypervisor`), /dev/kvm, and the kvm_intel/kvm_amd
    `nested` parameter.
    Why: on an L1 guest whose hypervisor hides VT-x/AMD-V there is no KVM ("Could not access
    KVM kernel module"), and an L0 with nested=N gives its own guests no KVM.
    Fix: manual; `options kvm_intel nested=1` (or kvm_amd) and a module reload with all guests
    stopped, on the host that runs this one when this is an L1."""
    flags = _cpu_flags(facts)
    nested = _nested(facts)
    evidence = {"vmx": None if flags is None else "vmx" in flags, "svm": None if flags is None else "svm" in flags,
                "hypervisor": None if flags is None else "hypervisor" in flags, "nested": nested}
    if flags is not None and "hypervisor" in flags and not ({"vmx", "svm"} & flags) and _kvm_usable(facts) is False:
        return Fail("this host is a virtual machine whose hypervisor hides VT-x/AMD-V (no vmx/svm flag): KVM "
                    "cannot work here (\"Could not access KVM kernel module\"); enable nested virtualisation on "
                    "the host below and give this guest host-passthrough or host-model", evidence,
                    plan=plan("Enable nested virtualisation on the host below this one", Auto.MANUAL,
                              notes=["on that host: echo 'options kvm_intel nested=1' > /etc/modprobe.d/kvm.conf "
                                     "(kvm_amd on AMD), reload the module with its guests stopped",
                                     "give this guest <cpu mode='host-passthrough'/> (or host-model), then "
                                     "restart it"]))
    off = [m for m, on in nested.items() if not on]
    if off:
        mod = off[0]
        return Fail(f"{mod} is loaded with nested=N: guests on this host cannot run KVM guests of their own", evidence,
                    plan=plan(f"Turn on {mod} nesting (persistently) and reload the module with all guests stopped",
                              Auto.MANUAL,
                              RunCommand(["sh", "-c", f"echo 'options {mod} nested=1' > /etc/modprobe.d/kvm-nested.conf"]),
                              RunCommand(["modprobe", "-r", mod]), RunCommand(["modprobe", mod]),
                              notes=["stop every guest first: the module cannot be unloaded while one runs"]))
    return Pass("nested virtualisation is on (or not needed here)", evidence)


@check("nested-virt-disabled", scope="domain", area="cpu", severity="error", plans=True,
       title="A domain that requires VT-x/AMD-V gets it from this host")
def nested_virt_disabled_domain(facts, dom):
    """Looks at a domain that requires `vmx` or `svm` (<feature policy='require'>) against the
    host's nested parameter.
    Why: the domain wants to run KVM guests itself, but this host's nesting is off, so the
    start fails ("Host CPU does not provide required features: vmx") or L2 gets no KVM.
    Fix: manual on the host (nested=1); unsafe on the domain (host-passthrough)."""
    cpu = dom.tree.find("cpu")
    wants = [f.get("name") for f in (cpu.iterfind("feature") if cpu is not None else [])
             if f.get("name") in ("vmx", "svm") and f.get("policy") in ("require", "force")]
    if not wants:
        return Pass("the domain does not require vmx/svm")
    nested = _nested(facts)
    off = [m for m, on in nested.items() if not on]
    if not off:
        return Pass(f"the domain requires {wants[0]} and nesting is on ({nested or 'no kvm_intel/kvm_amd'})")
    return Fail(f"the domain requires {wants[0]}, but {off[0]} has nested=N: it cannot start or gets no KVM for its "
                "own guests", {"requires": wants, "nested": nested},
                plan=plan(f"Turn on {off[0]} nesting", Auto.MANUAL,
                          RunCommand(["sh", "-c", f"echo 'options {off[0]} nested=1' > /etc/modprobe.d/kvm-nested.conf"]),
                          RunCommand(["modprobe", "-r", off[0]]), RunCommand(["modprobe", off[0]]),
                          notes=["stop every guest first", "give the domain <cpu mode='host-passthrough'/> so it "
                                 "sees every host feature"]))


# -- machine-type-unsupported -----------------------------------------------------------------
def _machines(facts, dom) -> dict[str, str | None]:
    """{machine name: canonical or None} this domain's emulator offers (capabilities)."""
    caps = facts.libvirt.capabilities()
    arch = dom.arch or "x86_64"
    out: dict[str, str | None] = {}
    for guest in caps.iterfind("guest"):
        a = guest.find("arch")
        if a is None or a.get("name") != arch:
            continue
        emus = {(a.findtext("emulator") or "").strip()} | {(d.findtext("emulator") or "").strip()
                                                           for d in a.iterfind("domain")}
        if dom.emulator and dom.emulator not in emus:
            continue
        for m in a.iter("machine"):
            if m.text:
                out[m.text.strip()] = m.get("canonical")
    if not out:
        raise FactUnavailable(f"capabilities list no machines for {arch} with {dom.emulator or 'the default emulator'}")
    return out


def replacement_machine(machine: str, machines: dict[str, str | None]) -> str | None:
    family = "q35" if "q35" in machine else "pc" if ("i440fx" in machine or machine.startswith("pc")) else None
    if family is None:
        return None
    alias = machines.get(family)
    return alias or (family if family in machines else None)


def _version_key(name: str):
    return [int(x) for x in re.findall(r"\d+", name)]


@check("machine-type-unsupported", scope="domain", area="cpu", severity="error", plans=True,
       title="The domain's machine type is one this QEMU offers")
def machine_type_unsupported(facts, dom):
    """Looks at /domain/os/type/@machine against the machine types the capabilities list for
    the domain's arch and emulator (with their canonical names).
    Why: XML from RHEL (pc-q35-rhel9.2.0), Ubuntu or a newer QEMU (pc-q35-8.2) names a type
    this QEMU lacks: "Emulator '...' does not support machine type '...'".
    Fix: unsafe (guest-visible hardware ABI); the newest type of the same family (q35 ->
    pc-q35-7.2, pc -> pc-i440fx-7.2); never switches between i440fx and q35."""
    machine = dom.machine
    if not machine:
        return Pass("no machine type given: libvirt picks the default")
    machines = _machines(facts, dom)
    if machine in machines:
        return Pass(f"machine type {machine} is offered by {dom.emulator or 'the emulator'}")
    new = replacement_machine(machine, machines)
    family = sorted((m for m in machines if ("q35" in m) == ("q35" in machine) and m.startswith("pc")),
                    key=_version_key)[-3:]
    evidence = {"machine": machine, "replacement": new, "offered_same_family": family}

    def edit(copy):
        copy.tree.find("os/type").set("machine", new)
        return f"Use machine type {new} instead of {machine}"

    fix = redefine_plan(dom, edit, auto=Auto.UNSAFE, notes=[
        "guest-visible hardware: Windows may ask for re-activation; the family (i440fx or q35) stays"]) if new else None
    return Fail(f"machine type {machine} is not offered by {dom.emulator or 'this QEMU'}"
                + (f" (same family here: {', '.join(family)})" if family else "")
                + f": \"does not support machine type '{machine}'\"", evidence, plan=fix)


@hookimpl
def virtdoctor_checks():
    return [cpu_model_unknown, cpu_incompatible_host, cpu_topology_mismatch, nested_virt_disabled_host,
            nested_virt_disabled_domain, machine_type_unsupported]

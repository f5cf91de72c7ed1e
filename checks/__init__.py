"""virtdoctor's built-in checks, one module per area. Each module is a pluggy
plugin implementing ``virtdoctor_checks``, exactly as a third-party plugin does.
The order here is the order of areas in the report."""

BUILTIN_PLUGINS = (
    "virtdoctor.checks.install",     # a fresh host: libvirt and QEMU installed at all
    "virtdoctor.checks.daemon",      # daemon process, socket, log dir, qemu user, dbus
    "virtdoctor.checks.connection",  # URI, non-root access, TCP listening
    "virtdoctor.checks.tls",         # CA, server and client certificates
    "virtdoctor.checks.kvm",         # /dev/kvm, hardware virtualisation
    "virtdoctor.checks.emulator",    # QEMU binaries, ROM files
    "virtdoctor.checks.firmware",    # UEFI, SMM, ACPI
    "virtdoctor.checks.network",     # networks, dnsmasq, firewall, bridges, bonds
    "virtdoctor.checks.platform",    # vhost-net, tun, cgroups, IOMMU, secure guests
    "virtdoctor.checks.schema",      # libvirt's RelaxNG schema
    "virtdoctor.checks.definition",  # boot order, undefine, root disk
    "virtdoctor.checks.stored",      # /etc/libvirt/qemu/*.xml the daemon does not load
    "virtdoctor.checks.storage",     # disks: bus, targets, sources, permissions, cache
    "virtdoctor.checks.pools",       # storage pools, pool targets, free space
    "virtdoctor.checks.images",      # backing chains, image formats, image locks, NFS
    "virtdoctor.checks.runstate",    # paused on I/O error, killed QEMU, managed save
    "virtdoctor.checks.helperd",     # virtlogd, virtlockd, lockd leases, hook scripts
    "virtdoctor.checks.snapshots",   # internal/external snapshot limits
    "virtdoctor.checks.guest",       # CPU, clock, vCPUs, USB, tablet
    "virtdoctor.checks.display",     # graphics and video
    "virtdoctor.checks.nics",        # MAC addresses
    "virtdoctor.checks.security",    # AppArmor, SELinux, security_driver, seclabels, dynamic ownership
    "virtdoctor.checks.cpu",         # CPU models and features, topology, nesting, machine types
    "virtdoctor.checks.memory",      # huge pages, memlock, host memory, balloon
    "virtdoctor.checks.lifecycle",   # panics, job lock, guest agent, console
    "virtdoctor.checks.netconflict", # subnets, DNS/DHCP ports, forwarding, RA, br_netfilter, bridges, macvtap
    "virtdoctor.checks.session",     # qemu:///session: the bridge helper
    "virtdoctor.checks.graphics",    # fixed display ports, listen addresses
    "virtdoctor.checks.tpm",         # swtpm tools and TPM state
    "virtdoctor.checks.virtiofs",    # virtiofsd, shared memory, session mode
    "virtdoctor.checks.passthrough", # IOMMU groups, hostdev claims, USB devices
)

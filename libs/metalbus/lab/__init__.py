"""The lab: qemu virtual machines with simulated IPMI BMCs on a provisioning network in a network namespace."""

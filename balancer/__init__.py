"""kvm-balancer: an automatic, explainable resource balancer for KVM/libvirt clusters."""

__version__ = "0.1.0"

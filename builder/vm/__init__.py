"""Virtual machines: QEMU, rehearsals, the demo, VirtualBox, the test source machines."""

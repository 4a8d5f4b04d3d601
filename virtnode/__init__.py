"""virtnode: the node agent that turns VirtualMachineInstance specs into QEMU guests over QMP."""

__all__: list[str] = []

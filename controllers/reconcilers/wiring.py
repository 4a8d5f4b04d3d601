"""The VirtualMachine and VirtualMachineInstance controllers, built one way for every mode."""

from __future__ import annotations

from controllers.api.kinds import DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.nodes import NodeDirectory
from controllers.reconcile import Controller, EventRecorder
from controllers.reconcilers.virtualmachine import VirtualMachineReconciler
from controllers.reconcilers.vmi import VirtualMachineInstanceReconciler
from controllers.store.protocol import Store


def vm_controllers(
    store: Store, nodes: NodeDirectory, recorder: EventRecorder
) -> tuple[Controller, Controller]:
    """(VirtualMachines, VirtualMachineInstances): a VM owns its DataVolumes and its VMI;
    a VMI goes to a registered node agent. ``diskplane up``, ``diskplane controllers``
    and the tests all run these two."""
    vms = Controller(
        "virtualmachines",
        store,
        VIRTUALMACHINE,
        VirtualMachineReconciler(store, recorder),
        owns=(DATAVOLUME, VIRTUALMACHINEINSTANCE),
    )
    vmis = Controller(
        "virtualmachineinstances",
        store,
        VIRTUALMACHINEINSTANCE,
        VirtualMachineInstanceReconciler(store, nodes, recorder),
    )
    return vms, vmis

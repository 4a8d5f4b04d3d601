"""Reconcilers: DataVolume and VirtualMachine; VirtualMachineInstance joins the node agent."""

from controllers.reconcilers.datavolume import FINALIZER, DataVolumeReconciler, requested_size
from controllers.reconcilers.importer import Importer, ImportJob, ImportState, ImportStatus
from controllers.reconcilers.virtualmachine import VirtualMachineReconciler, printable_status

__all__ = [
    "FINALIZER",
    "DataVolumeReconciler",
    "ImportJob",
    "ImportState",
    "ImportStatus",
    "Importer",
    "VirtualMachineReconciler",
    "printable_status",
    "requested_size",
]

"""Reconcilers: DataVolume now; VirtualMachine and VirtualMachineInstance follow."""

from controllers.reconcilers.datavolume import FINALIZER, DataVolumeReconciler, requested_size
from controllers.reconcilers.importer import Importer, ImportJob, ImportState, ImportStatus

__all__ = [
    "FINALIZER",
    "DataVolumeReconciler",
    "ImportJob",
    "ImportState",
    "ImportStatus",
    "Importer",
    "requested_size",
]

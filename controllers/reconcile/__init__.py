"""The reconciler framework: work queue, controller loop, event recorder."""

from controllers.reconcile.controller import Controller, Reconciler, Result, controller_owner
from controllers.reconcile.events import EventKind, EventRecorder
from controllers.reconcile.workqueue import ShutDown, WorkQueue

__all__ = [
    "Controller",
    "EventKind",
    "EventRecorder",
    "Reconciler",
    "Result",
    "ShutDown",
    "WorkQueue",
    "controller_owner",
]

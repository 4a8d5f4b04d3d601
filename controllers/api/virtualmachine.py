"""VirtualMachine and VirtualMachineInstance (``kubevirt.io/v1``) with KubeVirt's names.

Pod-network ``interfaces``/``networks`` (``masquerade`` or ``bridge`` on ``pod``)
are implemented as a user-mode NIC, so they are typed here, not upstream-only.
"""

from __future__ import annotations

from enum import StrEnum

from controllers.api.common import CONDITIONS, TIME
from controllers.api.datavolume import DATAVOLUME_SPEC
from controllers.api.schema import (
    UP,
    UP_BOOL,
    UP_INT,
    UP_LIST,
    UP_STR,
    Arr,
    Bool,
    Free,
    Int,
    MapOf,
    Obj,
    Quantity,
    Str,
    Upstream,
)


class RunStrategy(StrEnum):
    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"
    RERUN_ON_FAILURE = "RerunOnFailure"
    ONCE = "Once"
    WAIT_AS_RECEIVER = "WaitAsReceiver"


class PrintableStatus(StrEnum):
    """KubeVirt's ``VirtualMachinePrintableStatus`` values."""

    STOPPED = "Stopped"
    PROVISIONING = "Provisioning"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPING = "Stopping"
    TERMINATING = "Terminating"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    MIGRATING = "Migrating"
    UNKNOWN = "Unknown"
    ERROR_UNSCHEDULABLE = "ErrorUnschedulable"
    ERR_IMAGE_PULL = "ErrImagePull"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERROR_PVC_NOT_FOUND = "ErrorPvcNotFound"
    DATA_VOLUME_ERROR = "DataVolumeError"
    WAITING_FOR_VOLUME_BINDING = "WaitingForVolumeBinding"
    WAITING_FOR_RECEIVER = "WaitingForReceiver"


class VMIPhase(StrEnum):
    UNSET = ""
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    WAITING_FOR_SYNC = "WaitingForSync"
    UNKNOWN = "Unknown"


class VMConditionType(StrEnum):
    FAILURE = "Failure"
    READY = "Ready"
    PAUSED = "Paused"
    RESTART_REQUIRED = "RestartRequired"
    MANUAL_RECOVERY_REQUIRED = "ManualRecoveryRequired"


class VMIConditionType(StrEnum):
    PROVISIONING = "Provisioning"
    READY = "Ready"
    SYNCHRONIZED = "Synchronized"
    PAUSED = "Paused"
    AGENT_CONNECTED = "AgentConnected"
    DATA_VOLUMES_READY = "DataVolumesReady"
    LIVE_MIGRATABLE = "LiveMigratable"
    SOFTWARE_EMULATION = "SoftwareEmulation"


BUSES = ("virtio", "sata", "scsi", "usb")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

DISK = Obj(
    {
        "name": Str(),
        "disk": Obj({"bus": Str(enum=BUSES), "readonly": Bool(), "pciAddress": UP_STR}),
        "cdrom": Obj({"bus": Str(enum=BUSES), "readonly": Bool(), "tray": UP_STR}),
        "lun": UP,
        "bootOrder": Int(minimum=1),
        "serial": Str(),
        "cache": Str(enum=("none", "writethrough", "writeback")),
        "io": UP_STR,
        "dedicatedIOThread": UP_BOOL,
        "tag": UP_STR,
        "blockSize": UP,
        "shareable": UP_BOOL,
        "errorPolicy": UP_STR,
        "changedBlockTracking": UP_BOOL,
    },
    required=("name",),
)

INTERFACE = Obj(
    {
        "name": Str(),
        "masquerade": Obj({}),
        "bridge": Obj({}),
        "model": Str(),
        "macAddress": Str(),
        "ports": UP_LIST,
        "sriov": UP,
        "slirp": UP,
        "passt": UP,
        "binding": UP,
        "pciAddress": UP_STR,
        "bootOrder": UP_INT,
        "dhcpOptions": UP,
        "tag": UP_STR,
        "state": UP_STR,
        "acpiIndex": UP_INT,
    },
    required=("name",),
)

NETWORK = Obj(
    {
        "name": Str(),
        "pod": Obj({"vmNetworkCIDR": UP_STR, "vmIPv6NetworkCIDR": UP_STR}),
        "multus": UP,
    },
    required=("name",),
)

VOLUME = Obj(
    {
        "name": Str(),
        "containerDisk": Obj(
            {
                "image": Str(),
                "imagePullPolicy": Str(enum=PULL_POLICIES),
                "imagePullSecret": Str(),
                "path": Str(),
            },
            required=("image",),
        ),
        "persistentVolumeClaim": Obj(
            {"claimName": Str(), "readOnly": Bool(), "hotpluggable": UP_BOOL},
            required=("claimName",),
        ),
        "dataVolume": Obj({"name": Str(), "hotpluggable": UP_BOOL}, required=("name",)),
        "emptyDisk": Obj({"capacity": Quantity()}, required=("capacity",)),
        "cloudInitNoCloud": Obj(
            {
                "userData": Str(),
                "userDataBase64": Str(),
                "networkData": Str(),
                "networkDataBase64": Str(),
                "secretRef": UP,
                "networkDataSecretRef": UP,
            }
        ),
        "cloudInitConfigDrive": UP,
        "hostDisk": UP,
        "ephemeral": UP,
        "configMap": UP,
        "secret": UP,
        "serviceAccount": UP,
        "sysprep": UP,
        "downwardAPI": UP,
        "downwardMetrics": UP,
        "memoryDump": UP,
        "containerPath": UP,
    },
    required=("name",),
    one_of=(
        "containerDisk",
        "persistentVolumeClaim",
        "dataVolume",
        "emptyDisk",
        "cloudInitNoCloud",
        "cloudInitConfigDrive",
        "hostDisk",
        "ephemeral",
        "configMap",
        "secret",
        "serviceAccount",
        "sysprep",
        "downwardAPI",
        "downwardMetrics",
        "memoryDump",
        "containerPath",
    ),
)

DEVICES = Obj(
    {
        "disks": Arr(DISK),
        "interfaces": Arr(INTERFACE),
        "autoattachPodInterface": Bool(),
        "autoattachSerialConsole": Bool(),
        "autoattachGraphicsDevice": UP_BOOL,
        "autoattachMemBalloon": UP_BOOL,
        "autoattachInputDevice": UP_BOOL,
        "autoattachVSOCK": UP_BOOL,
        "rng": UP,
        "networkInterfaceMultiqueue": UP_BOOL,
        "blockMultiQueue": UP_BOOL,
        "inputs": UP_LIST,
        "gpus": UP_LIST,
        "hostDevices": UP_LIST,
        "filesystems": UP_LIST,
        "tpm": UP,
        "watchdog": UP,
        "sound": UP,
        "clientPassthrough": UP,
        "useVirtioTransitional": UP_BOOL,
        "disableHotplug": UP_BOOL,
        "downwardMetrics": UP,
        "logSerialConsole": UP_BOOL,
    }
)

DOMAIN = Obj(
    {
        "cpu": Obj(
            {
                "cores": Int(minimum=1),
                "sockets": Int(minimum=1),
                "threads": Int(minimum=1),
                "model": UP_STR,
                "features": UP_LIST,
                "dedicatedCpuPlacement": UP_BOOL,
                "isolateEmulatorThread": UP_BOOL,
                "numa": UP,
                "realtime": UP,
                "maxSockets": UP_INT,
            }
        ),
        "memory": Obj({"guest": Quantity(), "hugepages": UP, "maxGuest": Upstream(Quantity())}),
        "resources": Obj(
            {
                "requests": MapOf(Quantity()),
                "limits": MapOf(Quantity()),
                "overcommitGuestOverhead": UP_BOOL,
            }
        ),
        "machine": Obj({"type": Str()}),
        "devices": DEVICES,
        "firmware": UP,
        "features": UP,
        "clock": UP,
        "chassis": UP,
        "ioThreadsPolicy": UP_STR,
        "ioThreads": UP,
        "launchSecurity": UP,
    },
    required=("devices",),
)

VMI_SPEC = Obj(
    {
        "domain": DOMAIN,
        "volumes": Arr(VOLUME),
        "networks": Arr(NETWORK),
        "terminationGracePeriodSeconds": Int(minimum=0),
        "nodeSelector": Upstream(MapOf(Str())),
        "affinity": UP,
        "tolerations": UP_LIST,
        "topologySpreadConstraints": UP_LIST,
        "schedulerName": UP_STR,
        "priorityClassName": UP_STR,
        "evictionStrategy": UP_STR,
        "startStrategy": UP_STR,
        "hostname": UP_STR,
        "subdomain": UP_STR,
        "livenessProbe": UP,
        "readinessProbe": UP,
        "dnsConfig": UP,
        "dnsPolicy": UP_STR,
        "accessCredentials": UP_LIST,
        "architecture": UP_STR,
    },
    required=("domain",),
)

VMI_STATUS = Obj(
    {
        "phase": Str(enum=tuple(VMIPhase)),
        "conditions": CONDITIONS,
        "nodeName": Str(),
        "reason": Str(),
        "interfaces": Arr(
            Obj(
                {
                    "name": Str(),
                    "ipAddress": Str(),
                    "ipAddresses": Arr(Str()),
                    "mac": Str(),
                    "interfaceName": Str(),
                    "infoSource": Str(),
                    "queueCount": Int(),
                    "linkState": Str(),
                    "podInterfaceName": Str(),
                    # diskplane: declared ports forwarded from 127.0.0.1 on the node
                    "hostPorts": Arr(
                        Obj(
                            {
                                "name": Str(),
                                "protocol": Str(),
                                "port": Int(),
                                "hostIP": Str(),
                                "hostPort": Int(),
                            }
                        )
                    ),
                }
            )
        ),
        "phaseTransitionTimestamps": Arr(
            Obj({"phase": Str(enum=tuple(VMIPhase)), "phaseTransitionTimestamp": TIME})
        ),
        "machine": Obj({"type": Str()}),
        # diskplane extensions reported by the node agent
        "printableStatus": Str(enum=tuple(PrintableStatus)),
        "accelerator": Obj({"name": Str(), "reason": Str()}),
        "qemu": Obj({"pid": Int()}),
        "guestOSInfo": UP,
        "migrationState": UP,
        "migrationMethod": UP_STR,
        "migrationTransport": UP_STR,
        "qosClass": UP_STR,
        "launcherContainerImageVersion": UP_STR,
        "activePods": UP,
        "volumeStatus": UP_LIST,
        "currentCPUTopology": UP,
        "memory": UP,
        "selinuxContext": UP_STR,
        "evacuationNodeName": UP_STR,
        "fsFreezeStatus": UP_STR,
        "topologyHints": UP,
        "virtualMachineRevisionName": UP_STR,
        "runtimeUser": UP_INT,
        "kernelBootStatus": UP,
        "changedBlockTracking": UP,
        "deviceStatus": UP,
    }
)

DATAVOLUME_TEMPLATE = Obj(
    {
        "apiVersion": Str(),
        "kind": Str(),
        "metadata": Free(),
        "spec": DATAVOLUME_SPEC,
        "status": UP,
    },
    required=("spec",),
)

VM_SPEC = Obj(
    {
        "running": Bool(description="Deprecated upstream; true means Always, false Halted."),
        "runStrategy": Str(enum=tuple(RunStrategy)),
        "template": Obj({"metadata": Free(), "spec": VMI_SPEC}, required=("spec",)),
        "dataVolumeTemplates": Arr(DATAVOLUME_TEMPLATE),
        "instancetype": UP,
        "preference": UP,
        "updateVolumesStrategy": UP_STR,
    },
    required=("template",),
)

STATE_CHANGE_REQUEST = Obj(
    {"action": Str(enum=("Start", "Stop")), "data": MapOf(Str()), "uid": Str()},
    required=("action",),
)

VM_STATUS = Obj(
    {
        "printableStatus": Str(enum=tuple(PrintableStatus)),
        "ready": Bool(),
        "created": Bool(),
        "conditions": CONDITIONS,
        "runStrategy": Str(enum=tuple(RunStrategy)),
        "observedGeneration": Int(format="int64"),
        "desiredGeneration": Int(format="int64"),
        "stateChangeRequests": Arr(STATE_CHANGE_REQUEST),
        "startFailure": Obj(
            {"consecutiveFailCount": Int(), "lastFailedVMIUID": Str(), "retryAfterTimestamp": TIME}
        ),
        "volumeSnapshotStatuses": UP_LIST,
        "volumeRequests": UP_LIST,
        "memoryDumpRequest": UP,
        "restoreInProgress": UP_STR,
        "snapshotInProgress": UP_STR,
        "instancetypeRef": UP,
        "preferenceRef": UP,
        "volumeUpdateState": UP,
        "changedBlockTracking": UP,
    }
)

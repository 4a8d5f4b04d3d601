"""Annotation and label keys diskplane writes and reads.

On a containerDisk's config (``config.Labels``) and manifest (``annotations``):
the disk's format, virtual size and sha256. On a disk artifact: the same keys on
the manifest, and on each segment layer its index, offset and size (of the
uncompressed bytes) so a puller reassembles and a pusher re-uses segments.
"""

from __future__ import annotations

DISK_FORMAT = "io.diskplane.disk.format"
DISK_VIRTUAL_SIZE = "io.diskplane.disk.virtual-size"
DISK_SIZE = "io.diskplane.disk.size"
DISK_SHA256 = "io.diskplane.disk.sha256"
DISK_PATH = "io.diskplane.disk.path"

SEGMENT_INDEX = "io.diskplane.segment.index"
SEGMENT_OFFSET = "io.diskplane.segment.offset"
SEGMENT_SIZE = "io.diskplane.segment.size"
SEGMENT_SHA256 = "io.diskplane.segment.sha256"

OCI_TITLE = "org.opencontainers.image.title"
OCI_CREATED = "org.opencontainers.image.created"
OCI_DESCRIPTION = "org.opencontainers.image.description"
OCI_REF_NAME = "org.opencontainers.image.ref.name"

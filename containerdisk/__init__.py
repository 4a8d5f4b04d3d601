"""containerdisk: OCI references, layouts, containerDisk layers and a registry client.

The bottom layer of diskplane: it imports nothing of ours.
"""

__all__: list[str] = []

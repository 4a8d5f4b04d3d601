"""Disk formats: magic-byte detection, stream decompression, the native qcow2 reader."""

"""cloudInitNoCloud volumes as NoCloud ISOs (volume label ``cidata``), built with pycdlib."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pycdlib

from virtnode.errors import DiskError, SpecError

#: Largest user-data / network-config accepted (bytes, after base64 decoding).
MAX_SECTION_BYTES = 1024 * 1024


def nocloud_sections(source: Mapping[str, Any], namespace: str, name: str) -> dict[str, bytes]:
    """The files of the ISO: ``meta-data``, ``user-data`` and (if given) ``network-config``."""
    sections = {
        "meta-data": f"instance-id: {name}.{namespace}\nlocal-hostname: {name}\n".encode(),
        "user-data": _section(source, "userData", "userDataBase64") or b"",
    }
    network = _section(source, "networkData", "networkDataBase64")
    if network is not None:
        sections["network-config"] = network
    return sections


def _section(source: Mapping[str, Any], plain: str, b64: str) -> bytes | None:
    if plain in source and b64 in source:
        raise SpecError(f"cloudInitNoCloud sets both {plain} and {b64}; keep one")
    if plain in source:
        text = source[plain]
        if not isinstance(text, str):
            raise SpecError(f"cloudInitNoCloud {plain} must be a string")
        data = text.encode()
    elif b64 in source:
        try:
            data = bytes(base64.b64decode(str(source[b64]), validate=True))
        except binascii.Error as exc:
            raise SpecError(f"cloudInitNoCloud {b64} is not valid base64") from exc
    else:
        return None
    if len(data) > MAX_SECTION_BYTES:
        raise SpecError(f"cloudInitNoCloud {plain} is larger than {MAX_SECTION_BYTES} bytes")
    return data


def write_nocloud_iso(dest: Path, sections: Mapping[str, bytes]) -> None:
    """Write an ISO9660 (Joliet + Rock Ridge) image labelled ``cidata`` (blocking)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for index, (name, data) in enumerate(sorted(sections.items())):
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/FILE{index}.;1",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write(str(dest))
    except (pycdlib.pycdlibexception.PyCdlibException, OSError) as exc:
        raise DiskError(f"could not write the cloud-init ISO {dest}: {exc}") from exc
    finally:
        iso.close()

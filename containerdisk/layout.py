"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/sha256/``).

Written by ``diskplane build DISK --oci-layout DIR`` (what ``skopeo copy
oci:DIR:TAG docker://...`` reads) and read back by tests and tools.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from containerdisk import annotations as ann
from containerdisk import mediatypes as mt
from containerdisk.errors import ManifestError, NotFound
from containerdisk.oci import Descriptor, Index, Manifest, parse_manifest, sha256_digest

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


class OciLayout:
    """One layout directory; blobs are written under a temp name and renamed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"

    def create(self) -> OciLayout:
        self.blobs.mkdir(parents=True, exist_ok=True)
        marker = self.root / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps(LAYOUT_VERSION))
        return self

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise ManifestError(f"digest {digest[:80]!r} is not sha256")
        return self.blobs / hexpart

    def temp_blob(self) -> Path:
        return self.blobs / f".tmp-{secrets.token_hex(8)}"

    def commit_blob(self, temp: Path, digest: str) -> None:
        os.replace(temp, self.blob_path(digest))

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            temp = self.temp_blob()
            temp.write_bytes(data)
            self.commit_blob(temp, digest)
        return digest

    def read_blob(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        if not path.exists():
            raise NotFound(f"layout {self.root} has no blob {digest}")
        data = path.read_bytes()
        if sha256_digest(data) != digest:
            raise ManifestError(f"layout {self.root} blob {digest} does not match its digest")
        return data

    def index(self) -> Index:
        path = self.root / "index.json"
        if not path.exists():
            return Index(())
        parsed = parse_manifest(path.read_bytes(), mt.OCI_INDEX, f"{path}")
        if not isinstance(parsed, Index):
            raise ManifestError(f"{path} is not an image index")
        return parsed

    def tag_manifest(self, manifest: Manifest, tag: str) -> str:
        """Store ``manifest`` and point ``tag`` at it in ``index.json``; returns its digest."""
        body = manifest.encode()
        digest = self.put_bytes(body)
        entry = Descriptor(
            manifest.media_type, digest, len(body), annotations={ann.OCI_REF_NAME: tag}
        )
        kept = [d for d in self.index().manifests if d.annotations.get(ann.OCI_REF_NAME) != tag]
        index = Index((*kept, entry))
        temp = self.root / f".index.json.{secrets.token_hex(4)}"
        temp.write_bytes(index.encode())
        os.replace(temp, self.root / "index.json")
        return digest

    def manifest(self, tag: str) -> tuple[Manifest, str]:
        for desc in self.index().manifests:
            if desc.annotations.get(ann.OCI_REF_NAME) == tag:
                parsed = parse_manifest(
                    self.read_blob(desc.digest), desc.media_type, f"manifest {tag} in {self.root}"
                )
                if not isinstance(parsed, Manifest):
                    raise ManifestError(f"layout {self.root} tag {tag} is an index")
                return parsed, desc.digest
        raise NotFound(f"layout {self.root} has no tag {tag!r}")

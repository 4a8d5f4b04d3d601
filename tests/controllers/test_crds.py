"""The checked-in CRDs are what the API types generate, and they are structural."""

from __future__ import annotations

from typing import Any

import yaml

from controllers import crdgen
from controllers.api import CUSTOM_KINDS


def test_checked_in_crds_match_the_api_types() -> None:
    stale = crdgen.drift()
    assert stale == [], f"regenerate with `python -m controllers.crdgen`: {stale}"


def test_check_mode_reports_drift(tmp_path: Any) -> None:
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "extra.yaml").write_text("{}\n")
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1


def _walk(schema: dict[str, Any], path: str = "") -> list[str]:
    """Structural-schema violations: every node has a type unless it is int-or-string."""
    bad = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        bad.append(path or "<root>")
    for key, sub in schema.get("properties", {}).items():
        bad += _walk(sub, f"{path}.{key}")
    if "items" in schema:
        bad += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        bad += _walk(schema["additionalProperties"], f"{path}.*")
    return bad


def test_crds_are_structural_with_status_and_columns() -> None:
    for kind in CUSTOM_KINDS:
        doc = yaml.safe_load(crdgen.render(kind))
        version = doc["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert _walk(version["schema"]["openAPIV3Schema"]) == []
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert "Age" in names
    dv = yaml.safe_load(crdgen.render(CUSTOM_KINDS[0]))
    columns = dv["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Progress", "Restarts", "Age"]

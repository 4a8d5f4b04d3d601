"""Where state lives when nobody says: flag, then environment, then a per-user default."""

from __future__ import annotations

from pathlib import Path

import pytest

from controllers import settings


@pytest.mark.parametrize(
    ("flag", "env", "xdg", "euid", "expected"),
    [
        pytest.param("/srv/dp", "/env/dp", None, 0, "/srv/dp", id="flag-wins"),
        pytest.param(None, "/env/dp", None, 0, "/env/dp", id="env-next"),
        pytest.param(None, None, "/xdg", 0, "/xdg/diskplane", id="xdg-even-for-root"),
        pytest.param(None, None, None, 0, "/var/lib/diskplane", id="root-system-dir"),
        pytest.param(None, None, None, 1000, "HOME/.local/share/diskplane", id="user-home"),
    ],
)
def test_resolve_data_dir(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flag: str | None,
    env: str | None,
    xdg: str | None,
    euid: int,
    expected: str,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in ((settings.DATA_DIR_ENV, env), ("XDG_DATA_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(settings.os, "geteuid", lambda: euid)
    want = Path(expected.replace("HOME", str(tmp_path)))
    assert settings.resolve_data_dir(flag) == want

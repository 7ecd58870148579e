"""Where the app keeps its files: <data dir>/diffusion-studio, unless the environment says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication

from diffusion_studio.app.settings import (
    APP_ID,
    DATA_DIR_ENV,
    checkpoints_dir,
    configure_application,
    data_dir,
)


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_DATA_HOME is Linux's")
def test_data_folder_is_diffusion_studio_with_and_without_the_app_named(
    qapp, tmp_path, monkeypatch
):
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    expected = tmp_path / "share" / "diffusion-studio"
    assert data_dir() == expected
    names = (QCoreApplication.organizationName(), QCoreApplication.applicationName())
    try:
        configure_application(qapp)
        assert QCoreApplication.applicationName() == APP_ID
        assert checkpoints_dir() == expected / "checkpoints" and checkpoints_dir().is_dir()
    finally:
        QCoreApplication.setOrganizationName(names[0])
        QCoreApplication.setApplicationName(names[1])


def test_the_environment_redirects_the_data_folder(app_dirs):
    assert data_dir() == Path(app_dirs.data)

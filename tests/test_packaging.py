"""Packaging: desktop files validate, icons exist at every size, the wheel carries the resources,
the self-check passes; and (slow, opt-in with DS_TEST_BUNDLE=1) the PyInstaller bundle builds
and passes its own headless self-check."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from diffusion_studio.core.resources import resource_path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
DESKTOP = PACKAGING / "diffusion-studio.desktop"
APP_ID = "io.github.diffusion_studio.DiffusionStudio"
METAINFO = PACKAGING / f"{APP_ID}.metainfo.xml"
MIME_XML = PACKAGING / "diffusion-studio-mime.xml"
ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)
BUNDLE_DIR = ROOT / "dist" / "diffusion-studio"


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- desktop files


def test_desktop_entry_opens_files_and_names_the_icon():
    entry = _desktop_entry()
    assert entry["Exec"] == "diffusion-studio %f"
    assert entry["Type"] == "Application" and entry["Terminal"] == "false"
    mime_types = entry["MimeType"].rstrip(";").split(";")
    assert {"image/png", "image/jpeg", "application/x-safetensors"} <= set(mime_types)
    assert resource_path("icons", f"{entry['Icon']}.svg").is_file()


def test_mime_xml_defines_safetensors():
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    root = ET.parse(MIME_XML).getroot()
    (mime,) = root.findall("m:mime-type", ns)
    assert mime.get("type") == "application/x-safetensors"
    assert [g.get("pattern") for g in mime.findall("m:glob", ns)] == ["*.safetensors"]


def test_metainfo_matches_desktop_file():
    root = ET.parse(METAINFO).getroot()
    assert root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == DESKTOP.name
    assert root.findtext("icon") == _desktop_entry()["Icon"]
    assert root.findtext("provides/binary") == "diffusion-studio"


@pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None,
    reason="desktop-file-validate not installed (Debian: apt-get install desktop-file-utils)",
)
def test_desktop_file_validates():
    result = _run("desktop-file-validate", str(DESKTOP))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


@pytest.mark.skipif(
    shutil.which("appstreamcli") is None,
    reason="appstreamcli not installed (Debian: apt-get install appstream)",
)
def test_metainfo_validates():
    result = _run("appstreamcli", "validate", "--no-net", str(METAINFO))
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- icons


@pytest.mark.parametrize("size", ICON_SIZES)
def test_icon_png_sizes(size):
    with Image.open(resource_path("icons", f"diffusion-studio-{size}.png")) as image:
        assert image.format == "PNG" and image.size == (size, size)
        assert image.mode == "RGBA"
        alpha = image.getchannel("A")
        assert alpha.getpixel((0, 0)) == 0  # transparent corner
        assert alpha.getpixel((size // 2, size // 2)) == 255  # opaque middle


def test_icon_svg():
    root = ET.parse(resource_path("icons", "diffusion-studio.svg")).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 512 512"
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) > 50  # background + grid


# ----------------------------------------------------------------------------- wheel


def _setuptools_builds_wheels() -> bool:
    """setuptools >= 70.1 has bdist_wheel built in (older needs the `wheel` package too)."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except Exception:  # noqa: BLE001 - not installed or an odd version: let pip isolate
        return False
    return (major, minor) >= (70, 1)


def _build_wheel(tmp_path: Path) -> Path:
    """`pip wheel .` from a copy of the checkout (the checkout stays clean): the wheel's path."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("core", "app", "resources"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    out = tmp_path / "wheel"
    # Build with the venv's setuptools when it can make wheels by itself (fast, offline);
    # otherwise pip fetches the build requirements into an isolated environment.
    isolation = ["--no-build-isolation"] if _setuptools_builds_wheels() else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation]
        + ["--quiet", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("diffusion_studio-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def _top_level_names(names: set[str]) -> set[str]:
    """The import names a wheel installs: its top-level folders and modules (not its metadata)."""
    tops = {name.split("/")[0] for name in names}
    return {top.removesuffix(".py") for top in tops if not top.endswith((".dist-info", ".data"))}


def test_wheel_contains_resources_and_entry_point(wheel):
    """The wheel carries the data, photos and icons, declares the command and the diffusers
    extra, and installs one top-level import name (issue 19: no `core`, `app`, `resources`)."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta_text = archive.read(metadata).decode()
        entry_points = archive.read(metadata.replace("METADATA", "entry_points.txt")).decode()
    assert _top_level_names(names) == {"diffusion_studio"}
    shipped = "diffusion_studio/resources"
    expected = {f"{shipped}/data/digits.npz", f"{shipped}/icons/diffusion-studio.svg"}
    expected |= {f"{shipped}/icons/diffusion-studio-{s}.png" for s in ICON_SIZES}
    expected |= {f"{shipped}/photos/{p.name}" for p in (ROOT / "resources" / "photos").iterdir()}
    assert expected <= names, sorted(expected - names)
    expected_modules = {
        f"diffusion_studio/{path.relative_to(ROOT).as_posix()}"
        for package in ("core", "app")
        for path in (ROOT / package).rglob("*.py")
    }
    assert expected_modules <= names, sorted(expected_modules - names)
    assert "diffusion_studio/__init__.py" not in names  # a namespace package: nothing to collide
    assert "diffusion-studio = diffusion_studio.app.cli:main" in entry_points
    assert "Provides-Extra: diffusers" in meta_text


@pytest.mark.slow  # a fresh venv, the wheel installed into it, and the self-check (torch, Qt)
def test_wheel_in_a_fresh_venv_passes_self_check(wheel, tmp_path):
    """`pip install` of the wheel into a fresh venv: the command and `python -m` both run the
    self-check from the installed files (not the checkout). The dependencies come from this
    venv through a .pth line, so nothing is downloaded."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    import torch  # where this venv keeps the dependencies

    dependencies = Path(torch.__file__).resolve().parent.parent
    (Path(site) / "dependencies.pth").write_text(f"{dependencies}\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", site]
        + [str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    located = subprocess.run(
        [
            str(python),
            "-c",
            "import diffusion_studio.core as c, sys; print(c.__file__);"
            "print(any(m in sys.modules for m in ('core', 'app', 'resources')))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert located.returncode == 0, located.stderr
    core_file, stray = located.stdout.split()
    assert Path(core_file).is_relative_to(site) and stray == "False"
    result = subprocess.run(
        [str(python), "-m", "diffusion_studio.app", "--self-check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "self-check passed" in result.stdout


# ----------------------------------------------------------------------------- self-check


@pytest.mark.slow  # imports torch, Qt and the GUI, trains and samples: several seconds
def test_self_check_passes_headless(capsys, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from diffusion_studio.app.self_check import CHECKS, run_self_check

    assert run_self_check() == 0
    out = capsys.readouterr().out
    for name, _ in CHECKS:
        assert f"ok    {name}:" in out
    assert "self-check passed" in out


def test_self_check_reports_a_missing_resource(capsys, monkeypatch, tmp_path):
    """A bundle without its icons must fail the self-check, and say which check failed."""
    import diffusion_studio.app.self_check as self_check
    import diffusion_studio.core.resources  # noqa: F401
    from diffusion_studio import core

    monkeypatch.setattr(core.resources, "resources_dir", lambda: tmp_path)
    monkeypatch.setattr(self_check, "CHECKS", [("icons", self_check._check_icons)])
    assert self_check.run_self_check() == 1
    err = capsys.readouterr().err
    assert "FAIL  icons: FileNotFoundError" in err and "self-check FAILED" in err


# ----------------------------------------------------------------------------- the bundle


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DS_TEST_BUNDLE") != "1",
    reason="builds the PyInstaller bundle (minutes): run with DS_TEST_BUNDLE=1",
)
def test_bundle_builds_and_passes_self_check(tmp_path):
    result = subprocess.run(
        ["make", "bundle"], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "self-check passed" in result.stdout
    program = BUNDLE_DIR / "diffusion-studio"
    internal = BUNDLE_DIR / "_internal"
    assert (internal / "resources" / "icons" / "diffusion-studio-256.png").is_file()
    assert not (internal / "diffusers").exists()  # optional extra: not bundled
    assert not (internal / "torch" / "include").exists()
    # the bundled CLI works too, with a clean environment and no Python on PATH
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    csv = tmp_path / "schedule.csv"
    run = subprocess.run(
        [str(program), "schedule", "--out", str(csv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert csv.read_text().splitlines()[0].startswith("t,")


def test_no_module_imports_the_old_top_level_names():
    """Every import of the project's own code goes through `diffusion_studio.` (issue 19): an
    `import core` would load a second copy of a module from the checkout, with its own registry."""
    import ast

    offenders = []
    for folder in ("core", "app", "tests", "benchmarks", "packaging"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in ("core", "app", "resources"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []

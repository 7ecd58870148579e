"""The GUI's process set-up that must happen before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

from diffusion_studio.app import gui_env


def test_the_wait_policy_is_passive_except_on_linux():
    """Linux keeps OpenMP's own policy (a job's threads run at a lower priority instead)."""
    assert gui_env.gui_wait_policy("linux") is None
    assert gui_env.gui_wait_policy("win32") == "PASSIVE"
    assert gui_env.gui_wait_policy("darwin") == "PASSIVE"


def test_prepare_gui_threading_sets_the_platforms_policy_unless_chosen(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(gui_env.sys, "platform", "win32")
    gui_env.prepare_gui_threading()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    gui_env.prepare_gui_threading()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(gui_env.sys, "platform", "linux")
    gui_env.prepare_gui_threading()
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_gui_entry_sets_the_wait_policy_before_torch_is_imported():
    """`diffusion-studio` with no subcommand: when the GUI module is reached, the policy is
    set and nothing on the way has imported torch (OpenMP reads the policy when torch loads).
    The policy is forced to PASSIVE here so that the test means the same on every platform;
    the GUI module is replaced by a stub that records the state it is entered in."""
    code = (
        "import os, sys, types\n"
        "import diffusion_studio.app.gui_env\n"
        "diffusion_studio.app.gui_env.gui_wait_policy = lambda platform: 'PASSIVE'\n"
        "stub = types.ModuleType('diffusion_studio.app.main_window')\n"
        "def run_app(paths):\n"
        "    print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
        "    return 0\n"
        "stub.run_app = run_app\n"
        "sys.modules['diffusion_studio.app.main_window'] = stub\n"
        "import diffusion_studio.app.cli\n"
        "diffusion_studio.app.cli._display_available = lambda: True\n"
        "sys.exit(diffusion_studio.app.cli.main([]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["PASSIVE", "False"]

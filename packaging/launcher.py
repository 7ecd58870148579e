"""Entry point of the PyInstaller bundle: the same `main` as the `diffusion-studio` command."""

from __future__ import annotations

import multiprocessing
import sys

from diffusion_studio.app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen program must call this before anything else
    sys.exit(main())

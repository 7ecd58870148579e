"""`python -m diffusion_studio.app`: the same `main` as the `diffusion-studio` command."""

import sys

from diffusion_studio.app.cli import main

if __name__ == "__main__":
    sys.exit(main())

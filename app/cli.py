"""Command-line front end (placeholder until the CLI lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("diffusion-studio: CLI not built yet")
    return 0

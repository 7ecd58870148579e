"""Diffusion Studio's desktop app (PySide6 + pyqtgraph) and its command-line front end."""

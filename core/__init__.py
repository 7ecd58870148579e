"""Diffusion Studio's engine: schedules, samplers, models, data, training, sampling,
checkpoints and export. Pure torch + numpy + Pillow; never imports Qt."""

__version__ = "0.1.0"

"""Presets (core.training.preset_config / default_model_config): valid configs for both
objectives on every built-in data source, and the settings benchmarks/README.md cites
("Flow matching and diffusion (issue 17)")."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_studio.core.data import TOY_DATASETS
from diffusion_studio.core.flow import OBJECTIVES
from diffusion_studio.core.models import MLPConfig, UNetConfig, build_model, count_parameters
from diffusion_studio.core.training import (
    DIGIT_CLASSES,
    TrainConfig,
    Trainer,
    TrainProgress,
    default_model_config,
    preset_config,
)

SOURCES = ("digits", *TOY_DATASETS)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("data", SOURCES)
def test_preset_is_a_valid_config_for_each_objective(data, objective):
    config = preset_config(data, objective=objective)
    assert config.objective == objective
    assert TrainConfig.from_dict(config.to_dict()) == config
    expected = UNetConfig if data == "digits" else MLPConfig
    assert isinstance(config.model, expected)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("data", ["digits", "moons"])
def test_preset_trains_a_step_for_each_objective(data, objective):
    torch.manual_seed(0)
    config = preset_config(data, objective=objective, max_steps=2, max_minutes=None)
    records = [r for r in Trainer(config).run() if isinstance(r, TrainProgress)]
    assert [r.step for r in records] == [1, 2]
    assert all(math.isfinite(r.loss) and r.loss > 0 for r in records)


def test_digits_preset_is_flow_matching_with_the_cited_settings():
    """benchmarks/README.md, "Flow matching and diffusion (issue 17)": flow with logit-normal
    t on the UNet without attention, batch 64, lr 2e-3, 5 minutes."""
    config = preset_config("digits")
    assert config.objective == "flow"
    assert config.flow_time_sampling == "logit-normal"
    assert config.batch_size == 64
    assert config.learning_rate == pytest.approx(2e-3)
    assert config.warmup_steps == 100
    assert config.max_minutes == 5.0
    assert config.class_conditional and config.model.num_classes == DIGIT_CLASSES
    assert config.model.attention_heads == 0


def test_only_the_builtin_digits_default_to_flow(tmp_path):
    assert preset_config("digits-train").objective == "flow"
    assert preset_config(str(tmp_path)).objective == "diffusion"


def test_a_diffusion_digits_run_keeps_its_measured_recipe():
    """Choosing diffusion gets the recipe of the "Time to quality" results (v, cosine, min-SNR 5)."""
    config = preset_config("digits", objective="diffusion")
    assert config.prediction_type == "v"
    assert config.schedule.kind == "cosine"
    assert config.min_snr_gamma == 5.0


def test_toy_presets_keep_their_measured_recipe():
    """benchmarks/README.md, "2-D toy sets": v + cosine, MLP 128 x 3, batch 256, lr 3e-3."""
    for name in TOY_DATASETS:
        config = preset_config(name)
        assert config.objective == "diffusion"
        assert (config.prediction_type, config.schedule.kind) == ("v", "cosine")
        assert config.model == MLPConfig(hidden=128, layers=3)
        assert (config.batch_size, config.learning_rate) == (256, 3e-3)


def test_overrides_win_over_the_preset():
    config = preset_config("digits", objective="diffusion", batch_size=32, warmup_steps=7)
    assert (config.objective, config.batch_size, config.warmup_steps) == ("diffusion", 32, 7)


def test_digits_model_is_the_measured_unet():
    """benchmarks/README.md, "What was tried" and issue 17: widths (32, 64) on the 2x
    pixel-unshuffled input, no attention (about 0.64 M parameters with the labels)."""
    config = default_model_config("images", 28, 1, "default", DIGIT_CLASSES)
    assert isinstance(config, UNetConfig)
    assert config.channels == (32, 64) and config.pixel_unshuffle == 2
    assert config.attention_heads == 0
    assert 0.6e6 < count_parameters(build_model(config)) < 0.68e6


def test_three_level_nets_keep_attention():
    """Only the two-level nets of small images were measured without attention."""
    assert default_model_config("images", 64, 3).attention_heads > 0


@pytest.mark.parametrize("data", ["moons", "gaussians"])
def test_a_2d_presets_previews_are_a_point_cloud(data):
    """Every front end (the CLI's previews and metrics log, the Training panel) previews a 2-D
    model with PREVIEW_POINTS points, the images with 16 samples."""
    from diffusion_studio.core.training import PREVIEW_POINTS

    assert preset_config(data).preview_count == PREVIEW_POINTS >= 1000
    assert preset_config("digits").preview_count == 16

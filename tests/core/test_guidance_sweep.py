"""The guidance sweep (core.guidance_sweep): every cell is the sample `core.sampling.sample`
gives for its label and scale from the sweep's seed, the same noise down each column, the
unconditional row, the refusals and the captioned PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import to_uint8_images
from diffusion_studio.core.guidance_sweep import (
    GuidanceSweep,
    SweepProgress,
    SweepRequest,
    column_header,
    guidance_sweep,
    parse_classes,
    parse_scales,
    render_sweep,
    run_guidance_sweep,
    save_sweep_png,
)
from diffusion_studio.core.models import UNet, UNetConfig
from diffusion_studio.core.samplers import SamplerConfig, make_sampler
from diffusion_studio.core.sampling import sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

SMALL = dict(in_channels=1, image_size=8, channels=(8, 8), attention_heads=0, norm_groups=4)
DDIM = SamplerConfig("ddim", 4, "trailing")


def tiny_checkpoint(classes: int = 3, ignore_label: bool = False, name: str = "digits"):
    """A random tiny UNet as a checkpoint (T = 50); `ignore_label`: every class embedding
    (and the no-label one) is the same vector, so the output does not depend on the label."""
    torch.manual_seed(0)
    config = UNetConfig(**SMALL, num_classes=classes)
    model = UNet(config).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # (zero at init: every output 0)
    if ignore_label and model.class_embed is not None:
        with torch.no_grad():
            model.class_embed.weight[:] = model.class_embed.weight[0].clone()
    return Checkpoint(
        model_config=config,
        schedule_config=ScheduleConfig("cosine", 50),
        prediction_type="epsilon",
        model_state={k: v.clone() for k, v in model.state_dict().items()},
        data={"name": name, "kind": "images", "image_size": 8, "channels": 1},
    )


def direct(ckpt, config, classes, scale, seed, labels=True):
    """What `sample` gives for these labels (None: no label) and scale from `seed`."""
    model = build_model_from_checkpoint(ckpt)
    schedule = NoiseSchedule(ckpt.schedule_config)
    sampler = make_sampler(config, schedule, ckpt.prediction_type)
    frames = sample(
        model,
        schedule,
        sampler,
        len(classes),
        ckpt.sample_shape,
        torch.Generator().manual_seed(seed),
        labels=torch.tensor(classes) if labels else None,
        guidance_scale=scale,
    )
    return list(frames)[-1].x_t.numpy()


@pytest.mark.parametrize("config", [DDIM, SamplerConfig("ddpm", 5, "trailing")])
def test_every_cell_is_a_direct_sample_with_its_label_and_scale(config):
    ckpt = tiny_checkpoint(3)
    request = SweepRequest(config, classes=(2, 0, 1), scales=(0.0, 1.0, 3.0), seed=7)
    sweep = guidance_sweep(ckpt, request)
    assert sweep.samples.shape == (4, 3, 1, 8, 8) and sweep.samples.dtype == np.float32
    assert sweep.scales == (None, 0.0, 1.0, 3.0) and sweep.classes == (2, 0, 1)
    assert sweep.row_titles == ("no label", "s = 0", "s = 1 (no guidance)", "s = 3")
    assert sweep.column_titles == ("2", "0", "1")  # the digits: the labels are the digits
    np.testing.assert_array_equal(
        sweep.samples[0], direct(ckpt, config, [2, 0, 1], 1.0, 7, labels=False)
    )
    for row, scale in enumerate((0.0, 1.0, 3.0), start=1):
        np.testing.assert_array_equal(sweep.samples[row], direct(ckpt, config, [2, 0, 1], scale, 7))
    # guidance changes the samples; s = 0 is the unconditional model
    assert not np.allclose(sweep.samples[2], sweep.samples[3], atol=1e-3)
    np.testing.assert_allclose(sweep.samples[1], sweep.samples[0], rtol=1e-4, atol=1e-4)
    # another seed, other noise
    other = guidance_sweep(ckpt, SweepRequest(config, (2, 0, 1), (0.0, 1.0, 3.0), seed=8))
    assert not np.allclose(other.samples, sweep.samples, atol=1e-3)


def test_a_model_that_ignores_the_label_gives_identical_rows():
    """The same noise down every column: only the label and the scale differ between rows."""
    ckpt = tiny_checkpoint(3, ignore_label=True)
    sweep = guidance_sweep(ckpt, SweepRequest(DDIM, (0, 1, 2), (0.0, 1.0, 2.0, 8.0), seed=1))
    for row in sweep.samples[1:]:
        np.testing.assert_allclose(row, sweep.samples[0], rtol=1e-4, atol=1e-4)
    # the columns differ (one noise per column, not one for the whole grid)
    assert not np.allclose(sweep.samples[0, 0], sweep.samples[0, 1], atol=1e-3)


def test_progress_per_step_of_each_row_then_the_sweep_and_no_unconditional_row():
    ckpt = tiny_checkpoint(3, name="shapes")
    records = list(run_guidance_sweep(ckpt, SweepRequest(DDIM, (1,), (2.0, 4.0), 0, False)))
    progress, result = records[:-1], records[-1]
    assert isinstance(result, GuidanceSweep) and all(isinstance(p, SweepProgress) for p in progress)
    assert [(p.run, p.step) for p in progress] == [(r, s) for r in (1, 2) for s in range(1, 6)]
    assert progress[-1].fraction == 1.0 and progress[0].runs == 2 and progress[0].steps == 5
    assert [p.title for p in progress[::5]] == ["s = 2", "s = 4"]
    assert result.samples.shape == (2, 1, 1, 8, 8) and result.scales == (2.0, 4.0)
    assert result.column_titles == ("class 1",)  # not the digits: 'class k'
    assert result.description == f"{DDIM.summary()}, seed 0"


def test_refusals_before_any_step():
    plain = tiny_checkpoint(0)
    with pytest.raises(ConfigError, match="class-conditional"):
        next(run_guidance_sweep(plain, SweepRequest(DDIM, (0,))))
    ckpt = tiny_checkpoint(3)
    with pytest.raises(ConfigError, match="from 0 to 2"):
        next(run_guidance_sweep(ckpt, SweepRequest(DDIM, (3,))))
    with pytest.raises(ConfigError, match="at least one class"):
        next(run_guidance_sweep(ckpt, SweepRequest(DDIM, ())))
    with pytest.raises(ConfigError, match="between 0 and 20"):
        next(run_guidance_sweep(ckpt, SweepRequest(DDIM, (0,), (1.0, 25.0))))
    with pytest.raises(ConfigError, match="steps"):
        next(run_guidance_sweep(ckpt, SweepRequest(SamplerConfig("ddim", 500), (0,))))


def test_parse_scales_and_classes():
    assert parse_scales("0, 1, 2, 4, 8") == (0.0, 1.0, 2.0, 4.0, 8.0)
    assert parse_scales(" 1.5;3 ") == (1.5, 3.0)
    for bad, reason in [("", "at least one"), ("1, two", "'two' is not a number"), ("30", "20")]:
        with pytest.raises(ConfigError, match=reason):
            parse_scales(bad)
    assert parse_classes("all", 4) == (0, 1, 2, 3) and parse_classes("", 2) == (0, 1)
    assert parse_classes("3, 0", 4) == (3, 0)
    for bad in ("4", "-1", "x"):
        with pytest.raises(ConfigError, match="from 0 to 3"):
            parse_classes(bad, 4)
    with pytest.raises(ConfigError, match="not class-conditional"):
        parse_classes("all", 0)


def test_render_places_every_cell_under_its_captions(tmp_path):
    """Cells upscaled to CELL_PX, left to right, top to bottom, with captions between rows."""
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, size=(3, 2, 1, 8, 8)).astype(np.float32)
    sweep = GuidanceSweep(
        samples, (None, 1.0, 4.0), (0, 1), ("no label", "s = 1", "s = 4"), ("0", "1"), "DDIM"
    )
    picture = render_sweep(sweep, cell_px=32)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    pixels = to_uint8_images(samples.reshape(6, 1, 8, 8))
    found = []
    for k in range(6):  # each cell, upscaled 4x, appears exactly where it belongs
        cell = np.repeat(np.repeat(pixels[k, :, :, 0], 4, 0), 4, 1)
        hits = [
            (y, x)
            for y in range(picture.shape[0] - 31)
            for x in range(picture.shape[1] - 31)
            if picture[y, x, 0] == cell[0, 0]
            and np.array_equal(picture[y : y + 32, x : x + 32, 0], cell)
        ]
        assert len(hits) == 1, k
        found.append(hits[0])
    ys = sorted({y for y, _ in found})
    xs = sorted({x for _, x in found})
    assert len(ys) == 3 and len(xs) == 2  # a 3 x 2 grid, rows apart by a caption band
    assert found == [(y, x) for y in ys for x in xs]
    assert ys[1] - ys[0] > 32 + 10
    path = save_sweep_png(tmp_path / "sweep.png", sweep, cell_px=32)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), picture)


def test_column_titles_are_centred_over_their_columns():
    band = column_header(("0", "1", "class 12"), cell_width=40, gap=2)
    assert band.dtype == np.uint8 and band.shape[2] == 3
    width = (band.shape[1] - 2) // 3 - 2  # 'class 12' is wider than a cell: every column widens
    assert width > 40 and band.shape[1] == 3 * (width + 2) + 2
    for j in range(3):
        left = 2 + j * (width + 2)
        dark = np.nonzero((band[:, left : left + width, 0] < 128).any(axis=0))[0]
        assert len(dark) > 0
        assert abs((dark[0] + dark[-1]) / 2 - (width - 1) / 2) <= 2, j


def test_a_flow_model_is_swept_on_its_path_with_a_flow_sampler():
    """A class-conditional flow-matching checkpoint: each row is `sample` on its FlowPath with
    Flow Euler, the same noise down each column; a diffusion sampler is refused before any step."""
    from dataclasses import replace

    from diffusion_studio.core.flow import FlowPath

    ckpt = replace(tiny_checkpoint(3), prediction_type="velocity", objective="flow")
    flow_euler = SamplerConfig("flow-euler", 4, "trailing")
    request = SweepRequest(flow_euler, classes=(1, 2), scales=(1.0, 3.0), seed=4)
    sweep = guidance_sweep(ckpt, request)
    assert sweep.samples.shape == (3, 2, 1, 8, 8)
    model = build_model_from_checkpoint(ckpt)
    path = FlowPath(ckpt.schedule_config.num_timesteps)
    for row, (labels, scale) in enumerate(((None, 1.0), ([1, 2], 1.0), ([1, 2], 3.0))):
        frames = sample(
            model,
            path,
            make_sampler(flow_euler, path, "velocity"),
            2,
            ckpt.sample_shape,
            torch.Generator().manual_seed(4),
            labels=None if labels is None else torch.tensor(labels),
            guidance_scale=scale,
        )
        np.testing.assert_array_equal(sweep.samples[row], list(frames)[-1].x_t.numpy())
    assert not np.allclose(sweep.samples[1], sweep.samples[2], atol=1e-4)  # guidance acts
    with pytest.raises(ConfigError, match="flow"):
        next(run_guidance_sweep(ckpt, replace(request, sampler=DDIM)))

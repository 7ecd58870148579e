"""diffusers UNet2DModel folders: finding them, mapping their scheduler, and playing them back
exactly as diffusers' own DDPM/DDIM pipelines do (same seed, same samples)."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from diffusion_studio.core.checkpoint import (
    Checkpoint,
    build_model_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from diffusion_studio.core.diffusers_models import (
    DIFFUSERS_CONFIG,
    DIFFUSERS_WEIGHTS,
    SCHEDULER_CONFIG,
    diffusers_export_problem,
    export_diffusers,
    find_diffusers_model,
    is_diffusers_model,
    scheduler_settings,
)
from diffusion_studio.core.errors import CheckpointError, ConfigError, ExportError
from diffusion_studio.core.models import (
    DiffusersUNetConfig,
    MLPConfig,
    UNetConfig,
    build_model,
    model_config_from_dict,
)
from diffusion_studio.core.samplers import SamplerConfig, make_sampler
from diffusion_studio.core.sampling import sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

T = 100
UNET_KWARGS = {
    "sample_size": 8,
    "layers_per_block": 1,
    "block_out_channels": (8, 16),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not stall on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fake_model_folder(folder, unet_config=None, scheduler_config=None):
    """A folder that looks like a diffusers model (the weights file is not read)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "sample_size": 8}
    (folder / DIFFUSERS_CONFIG).write_text(json.dumps(config | (unet_config or {})))
    (folder / DIFFUSERS_WEIGHTS).write_bytes(b"")
    if scheduler_config is not None:
        (folder / SCHEDULER_CONFIG).write_text(json.dumps(scheduler_config))
    return folder


# ----------------------------------------------------------------------------- no diffusers needed


def test_finds_flat_pipeline_and_file_layouts(tmp_path):
    flat = _fake_model_folder(tmp_path / "flat", scheduler_config={})
    found = find_diffusers_model(flat)
    assert found.unet_dir == flat and found.root == flat
    assert found.scheduler_config == flat / SCHEDULER_CONFIG
    # picking one of its files means the folder
    assert find_diffusers_model(flat / DIFFUSERS_WEIGHTS) == found
    assert find_diffusers_model(flat / DIFFUSERS_CONFIG) == found

    pipe = tmp_path / "pipe"
    _fake_model_folder(pipe / "unet")
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / SCHEDULER_CONFIG).write_text("{}")
    (pipe / "model_index.json").write_text("{}")
    for picked in (
        pipe,
        pipe / "unet",
        pipe / "model_index.json",
        pipe / "scheduler" / SCHEDULER_CONFIG,
    ):
        found = find_diffusers_model(picked)
        assert found is not None, picked
        assert found.root == pipe and found.unet_dir == pipe / "unet"
        assert found.scheduler_config == pipe / "scheduler" / SCHEDULER_CONFIG

    # scheduler_config.json one level above a bare model folder
    above = tmp_path / "above"
    _fake_model_folder(above / "model")
    (above / SCHEDULER_CONFIG).write_text("{}")
    assert find_diffusers_model(above / "model").scheduler_config == above / SCHEDULER_CONFIG

    assert not is_diffusers_model(tmp_path)
    assert not is_diffusers_model(tmp_path / "missing")
    (tmp_path / "other.safetensors").write_bytes(b"")
    assert not is_diffusers_model(tmp_path / "other.safetensors")


@pytest.mark.parametrize(
    ("beta_schedule", "kind"),
    [
        ("linear", "linear"),
        ("scaled_linear", "scaled_linear"),
        ("squaredcos_cap_v2", "cosine"),
        ("sigmoid", "sigmoid"),
    ],
)
@pytest.mark.parametrize(
    ("raw_prediction", "prediction"),
    [("epsilon", "epsilon"), ("v_prediction", "v"), ("sample", "x0")],
)
def test_scheduler_mapping(beta_schedule, kind, raw_prediction, prediction):
    config = {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 500,
        "beta_start": 0.0002,
        "beta_end": 0.03,
        "beta_schedule": beta_schedule,
        "prediction_type": raw_prediction,
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "clip_sample": False,
    }
    schedule, pred, sampler, notes = scheduler_settings(config)
    assert (schedule.kind, schedule.num_timesteps) == (kind, 500)
    assert (schedule.beta_start, schedule.beta_end) == (0.0002, 0.03)
    assert schedule.zero_terminal_snr and schedule.betas is None
    assert pred == prediction
    assert sampler.kind == "ddim" and sampler.spacing == "trailing" and not sampler.clip_sample
    assert notes == []


def test_scheduler_defaults_and_trained_betas():
    """Absent keys take diffusers' defaults (DDPMScheduler: linear, epsilon, clip_sample)."""
    schedule, pred, sampler, _ = scheduler_settings({"_class_name": "DDPMScheduler"})
    assert (schedule.kind, schedule.num_timesteps, schedule.beta_start, schedule.beta_end) == (
        "linear",
        1000,
        1e-4,
        0.02,
    )
    assert pred == "epsilon" and not schedule.zero_terminal_snr
    assert sampler == SamplerConfig("ddpm", 50, "leading", clip_sample=True)

    betas = [0.01, 0.02, 0.05, 0.1]
    schedule, *_ = scheduler_settings({"trained_betas": betas, "num_train_timesteps": 1000})
    assert schedule.betas == tuple(betas) and schedule.num_timesteps == 4


def test_scheduler_notes_and_refusals():
    _, _, sampler, notes = scheduler_settings(
        {
            "steps_offset": 1,
            "set_alpha_to_one": False,
            "thresholding": True,
            "timestep_spacing": "karras",
            "variance_type": "learned_range",
        }
    )
    assert sampler.spacing == "leading" and sampler.option("variance_type") == "fixed_small"
    assert len(notes) == 5 and any("steps_offset 1" in n for n in notes)
    with pytest.raises(ConfigError, match="'exp'"):
        scheduler_settings({"beta_schedule": "exp"})
    with pytest.raises(ConfigError, match="'flow'"):
        scheduler_settings({"prediction_type": "flow"})
    with pytest.raises(ConfigError, match="beta_start"):
        scheduler_settings({"beta_start": 0.5, "beta_end": 0.1})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
        ({"in_channels": 4, "out_channels": 4}, "in_channels = 4"),
        ({"out_channels": 6}, "learned variance"),
        ({"num_class_embeds": 10}, "class-conditional"),
        ({"sample_size": None}, "sample_size"),
        ({"sample_size": [8, 0]}, "sample_size"),
    ],
)
def test_model_config_refuses_what_cannot_play(change, message):
    base = {"_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "sample_size": 8}
    with pytest.raises(ConfigError, match=message):
        DiffusersUNetConfig(config=json.dumps(base | change))


def test_model_config_round_trip():
    config = DiffusersUNetConfig(
        config={"in_channels": 1, "out_channels": 1, "sample_size": [8, 12]}
    )
    assert config.sample_shape == (1, 8, 12) and config.image_size == 12
    again = model_config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config)


def test_missing_diffusers_gives_install_hint(tmp_path, monkeypatch):
    scheduler = {"_class_name": "DDPMScheduler", "num_train_timesteps": T}
    folder = _fake_model_folder(tmp_path / "m", scheduler_config=scheduler)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(CheckpointError, match=r"pip install 'diffusion-studio\[diffusers\]'"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="diffusers extra"):
        build_model(DiffusersUNetConfig(config={"sample_size": 8}))


def test_folder_problems_are_checkpoint_errors(tmp_path):
    no_scheduler = _fake_model_folder(tmp_path / "a")
    with pytest.raises(CheckpointError, match="no scheduler_config.json"):
        load_checkpoint(no_scheduler)
    latent = tmp_path / "latent"
    _fake_model_folder(latent / "unet", scheduler_config={})
    (latent / "model_index.json").write_text(json.dumps({"vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(CheckpointError, match="latent diffusion"):
        load_checkpoint(latent)
    conditional = _fake_model_folder(tmp_path / "c", {"num_class_embeds": 3}, scheduler_config={})
    with pytest.raises(CheckpointError, match="class-conditional"):
        load_checkpoint(conditional)
    bad_scheduler = _fake_model_folder(tmp_path / "d", scheduler_config={"beta_schedule": "exp"})
    with pytest.raises(CheckpointError, match="beta_schedule 'exp'"):
        load_checkpoint(bad_scheduler)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path / "empty")


# ----------------------------------------------------------------------------- with diffusers


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _tiny_unet(diffusers, channels: int, seed: int = 0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(in_channels=channels, out_channels=channels, **UNET_KWARGS)
    with torch.no_grad():  # make every layer matter (diffusers zero-inits nothing, but be sure)
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval()


def _save(diffusers, tmp_path, unet, scheduler, layout: str):
    """Save like users do: a pipeline folder (unet/, scheduler/) or one flat folder."""
    folder = tmp_path / layout
    if layout == "pipeline":
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    else:
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    return folder


CASES = {
    # name: (channels, sampler, eta, scheduler kwargs)
    "ddim-eta0-linear-eps-clip": (3, "ddim", 0.0, {"beta_schedule": "linear", "clip_sample": True}),
    "ddim-eta1-cosine-v": (
        1,
        "ddim",
        1.0,
        {
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction",
            "clip_sample": False,
        },
    ),
    "ddim-eta0-zero-snr-x0": (
        3,
        "ddim",
        0.0,
        {"prediction_type": "sample", "rescale_betas_zero_snr": True, "clip_sample": True},
    ),
    "ddpm-linear-eps-clip": (3, "ddpm", None, {"clip_sample": True}),
    "ddpm-cosine-v-large": (
        1,
        "ddpm",
        None,
        {
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction",
            "variance_type": "fixed_large",
            "clip_sample": False,
        },
    ),
}


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
@pytest.mark.parametrize("case", list(CASES))
def test_playback_equals_diffusers_pipeline(diffusers, tmp_path, case, layout):
    channels, kind, eta, scheduler_kwargs = CASES[case]
    unet = _tiny_unet(diffusers, channels)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, **scheduler_kwargs)
    folder = _save(diffusers, tmp_path, unet, scheduler, layout)
    steps, batch, seed = 10, 3, 1234

    # diffusers' own pipeline (DDIMPipeline turns the DDPM config into a DDIMScheduler)
    if kind == "ddim":
        pipe = diffusers.DDIMPipeline(unet=unet, scheduler=scheduler)
        # a clipped x_0 comes with the eps recomputed from it (core.samplers.base)
        extra = {"eta": eta, "use_clipped_model_output": True}
    else:
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
        extra = {}
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        batch_size=batch,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="pt",
        **extra,
    ).images

    # ours, through load_checkpoint and the sampler the scheduler config suggests
    ckpt = load_checkpoint(folder)
    assert ckpt.sample_shape == (channels, 8, 8) and ckpt.meta["source"] == "diffusers"
    assert ckpt.data == {"name": layout, "kind": "images", "image_size": 8, "channels": channels}
    defaults = SamplerConfig.from_dict(ckpt.meta["sampler_defaults"])
    options = {"eta": eta} if kind == "ddim" else defaults.options
    config = dataclasses.replace(defaults, kind=kind, num_inference_steps=steps, options=options)
    assert config.clip_sample == scheduler_kwargs["clip_sample"]
    schedule = NoiseSchedule(ckpt.schedule_config)
    sampler = make_sampler(config, schedule, ckpt.prediction_type)
    model = build_model_from_checkpoint(ckpt)
    generator = torch.Generator().manual_seed(seed)
    frames = list(sample(model, schedule, sampler, batch, ckpt.sample_shape, generator))
    assert len(frames) == steps + 1
    ours = (frames[-1].x_t / 2 + 0.5).clamp(0, 1)

    # the comparison is not vacuous: most pixels are not clamped
    assert ((expected > 0.01) & (expected < 0.99)).float().mean() > 0.4
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_saved_in_our_format_loads_again(diffusers, tmp_path):
    """A diffusers model re-saved as our checkpoint keeps its config, weights and outputs."""
    unet = _tiny_unet(diffusers, 1)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction")
    ckpt = load_checkpoint(_save(diffusers, tmp_path, unet, scheduler, "flat"))
    path = save_checkpoint(tmp_path / "ours.safetensors", ckpt)
    again = load_checkpoint(path)
    assert again.model_config == ckpt.model_config and again.prediction_type == "v"
    assert again.schedule_config == ckpt.schedule_config
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 70])
    with torch.no_grad():
        reference = unet(x, t).sample
        torch.testing.assert_close(build_model_from_checkpoint(again)(x, t), reference)
        torch.testing.assert_close(build_model_from_checkpoint(ckpt)(x, 70), unet(x, 70).sample)


def test_cli_samples_a_diffusers_folder(diffusers, tmp_path):
    from diffusion_studio.app.cli import main

    unet = _tiny_unet(diffusers, 3)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T)
    folder = _save(diffusers, tmp_path, unet, scheduler, "pipeline")
    out = tmp_path / "s.npy"
    code = main(
        ["sample", "--checkpoint", str(folder), "--steps", "4", "--n", "2", "--npy", str(out)]
    )
    assert code == 0
    samples = np.load(out)
    assert samples.shape == (2, 3, 8, 8) and np.isfinite(samples).all()


# ----------------------------------------------------------------------------- export


def _our_checkpoint(model_config, schedule=None, prediction="v") -> Checkpoint:
    torch.manual_seed(0)
    model = build_model(model_config)
    with torch.no_grad():  # the output conv starts at zero: make the net say something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Checkpoint(
        model_config=model_config,
        schedule_config=schedule or ScheduleConfig("cosine", T),
        prediction_type=prediction,
        model_state=model.state_dict(),
        data={"name": "test", "kind": "images"},
    )


def test_export_refuses_models_without_a_diffusers_form(tmp_path):
    mlp = _our_checkpoint(MLPConfig(hidden=16, layers=1))
    with pytest.raises(ExportError, match="no diffusers counterpart"):
        export_diffusers(mlp, tmp_path / "mlp")
    unshuffled = UNetConfig(channels=(8, 16), attention_heads=2, pixel_unshuffle=2)
    assert "pixel-unshuffled" in diffusers_export_problem(unshuffled)
    with pytest.raises(ExportError, match="pixel_unshuffle 1"):
        export_diffusers(_our_checkpoint(unshuffled), tmp_path / "unet")
    assert not list(tmp_path.iterdir())  # nothing half-written
    config = UNetConfig(image_size=8, channels=(8, 16), attention_heads=2, norm_groups=4)
    assert diffusers_export_problem(config) is None
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_diffusers(_our_checkpoint(config), tmp_path / "taken")


EXPORT_CASES = {
    "attention-v-cosine": (
        UNetConfig(
            in_channels=1, image_size=16, channels=(8, 16, 16), attention_heads=2, norm_groups=4
        ),
        ScheduleConfig("cosine", T),
        "v",
    ),
    "rgb-no-attention-eps-linear": (
        UNetConfig(
            in_channels=3, image_size=8, channels=(8, 16), layers_per_level=2, attention_heads=0
        ),
        ScheduleConfig("linear", T, 1e-3, 0.05),
        "epsilon",
    ),
    "one-level-x0-zero-snr": (
        UNetConfig(in_channels=1, image_size=8, channels=(16,), attention_heads=4, norm_groups=4),
        ScheduleConfig("scaled_linear", T, zero_terminal_snr=True),
        "x0",
    ),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_plays_back_in_diffusers_like_here(diffusers, tmp_path, case):
    model_config, schedule_config, prediction = EXPORT_CASES[case]
    ckpt = _our_checkpoint(model_config, schedule_config, prediction)
    folder = export_diffusers(ckpt, tmp_path / "exported")
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "scheduler", "unet"]

    pipe = diffusers.DDPMPipeline.from_pretrained(folder)  # what diffusers users would do
    ddim = diffusers.DDIMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    ddim.set_progress_bar_config(disable=True)
    steps, batch, seed = 8, 2, 99
    expected = ddim(
        batch_size=batch,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="pt",
    ).images

    model = build_model_from_checkpoint(ckpt)
    schedule = NoiseSchedule(ckpt.schedule_config)
    sampler = make_sampler(SamplerConfig("ddim", steps, "trailing"), schedule, prediction)
    generator = torch.Generator().manual_seed(seed)
    frames = list(sample(model, schedule, sampler, batch, ckpt.sample_shape, generator))
    ours = (frames[-1].x_t / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    # and it opens here again, as a diffusers folder, with the same network and schedule
    again = load_checkpoint(folder)
    assert again.prediction_type == prediction and again.sample_shape == ckpt.sample_shape
    assert NoiseSchedule(again.schedule_config).alphas_cumprod.allclose(schedule.alphas_cumprod)
    x = torch.randn(batch, *ckpt.sample_shape)
    with torch.no_grad():
        torch.testing.assert_close(
            build_model_from_checkpoint(again)(x, 37), model(x, 37), rtol=0, atol=1e-5
        )


def test_export_of_an_opened_diffusers_model_keeps_its_weights(diffusers, tmp_path):
    unet = _tiny_unet(diffusers, 3)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction")
    ckpt = load_checkpoint(_save(diffusers, tmp_path, unet, scheduler, "flat"))
    folder = export_diffusers(ckpt, tmp_path / "again")
    reloaded = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    for name, value in unet.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0)
    assert json.loads((folder / "scheduler" / SCHEDULER_CONFIG).read_text())["prediction_type"] == (
        "v_prediction"
    )


@pytest.mark.parametrize(
    ("config", "kind", "spacing"),
    [
        ({"_class_name": "DDIMScheduler"}, "ddim", "leading"),
        ({"_class_name": "DPMSolverMultistepScheduler"}, "dpmpp-2m", "linspace"),
        (
            {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
            "dpmpp-2m-sde",
            "linspace",
        ),
        (
            {"_class_name": "UniPCMultistepScheduler", "timestep_spacing": "trailing"},
            "unipc",
            "trailing",
        ),
    ],
)
def test_a_scheduler_class_opens_with_its_sampler_and_default_spacing(config, kind, spacing):
    """The registry maps a diffusers scheduler (and, for DPM-Solver, its algorithm_type) to a
    sampler; an absent timestep_spacing takes that scheduler's own default."""
    _, _, sampler, notes = scheduler_settings(config)
    assert (sampler.kind, sampler.spacing, notes) == (kind, spacing, [])
    assert not sampler.clip_sample or kind == "ddim"  # only DDPM / DDIM clip by default


def test_unsupported_multistep_settings_are_noted():
    _, _, sampler, notes = scheduler_settings(
        {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3, "solver_type": "heun"}
    )
    assert sampler.kind == "dpmpp-2m"
    assert any("solver_order 3" in n for n in notes) and any("'heun'" in n for n in notes)
    _, _, sampler, notes = scheduler_settings(
        {"_class_name": "UniPCMultistepScheduler", "solver_type": "bh1", "solver_order": 3}
    )
    assert sampler.option("solver_order") == 3 and notes == [
        "solver_type 'bh1' is not available; 'bh2' is used"
    ]

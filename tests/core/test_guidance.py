"""Class-conditional models and classifier-free guidance (core.guidance, the UNet's labels,
the trainer's label dropout, sampling one class)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from diffusion_studio.core.checkpoint import load_checkpoint, save_checkpoint
from diffusion_studio.core.data import Dataset
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    class_labels,
    guided_output,
    num_classes,
    sampling_labels,
)
from diffusion_studio.core.models import UNet, UNetConfig
from diffusion_studio.core.samplers import SamplerConfig, make_sampler
from diffusion_studio.core.sampling import sample, sample_checkpoint
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from diffusion_studio.core.training import TrainConfig, Trainer, preset_config

SMALL = dict(in_channels=1, image_size=8, channels=(16, 32), attention_heads=0, pixel_unshuffle=2)


def conditional_unet(classes: int = 3) -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(**SMALL, num_classes=classes)).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # (zero at init: every output 0)
    return model


def test_the_label_changes_the_output_and_no_label_is_class_k():
    model = conditional_unet(3)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 10)
    with torch.no_grad():
        out = {k: model(x, t, torch.full((4,), k)) for k in range(4)}
        none = model(x, t)
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[1], out[2])
    torch.testing.assert_close(none, out[3])  # None = "no label" = index K
    assert num_classes(model) == 3


def test_bad_labels_are_refused_with_a_message():
    model = conditional_unet(3)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 10)
    with pytest.raises(ValueError, match="shape"):
        model(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        model(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integers"):
        model(x, t, torch.tensor([0.0, 1.0]))
    plain = UNet(UNetConfig(**SMALL))
    assert num_classes(plain) == 0
    with pytest.raises(ConfigError, match="not class-conditional"):
        plain(x, t, torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="num_classes"):
        UNetConfig(**SMALL, num_classes=-1)


def test_guided_output_is_the_classifier_free_guidance_combination():
    """out = uncond + s (cond - uncond): s = 1 is the conditional model, s = 0 the
    unconditional one (Ho & Salimans 2022, eq. 6 with s = 1 + w)."""
    model = conditional_unet(3)
    x, t, labels = torch.randn(5, 1, 8, 8), torch.full((5,), 30), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        cond, uncond = model(x, t, labels), model(x, t)
        torch.testing.assert_close(guided_output(model, x, t, labels, 1.0), cond)
        torch.testing.assert_close(guided_output(model, x, t, labels, 0.0), uncond)
        torch.testing.assert_close(
            guided_output(model, x, t, labels, 3.0), uncond + 3.0 * (cond - uncond)
        )


def test_labels_for_sampling_cycle_through_the_classes_or_pick_one():
    assert class_labels(10, 12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert class_labels(10, 3, 7).tolist() == [7, 7, 7]
    with pytest.raises(ConfigError, match="0 to 9"):
        class_labels(10, 3, 10)
    with pytest.raises(ConfigError, match="0 to 9"):
        class_labels(10, 3, -1)
    plain = UNet(UNetConfig(**SMALL))
    assert sampling_labels(plain, 4) is None
    with pytest.raises(ConfigError, match="not class-conditional"):
        sampling_labels(plain, 4, 2)


def test_sample_checks_labels_and_the_guidance_scale():
    model = conditional_unet(3)
    schedule = NoiseSchedule(ScheduleConfig("linear", 50))
    sampler = make_sampler(SamplerConfig("ddim", 3, "trailing"), schedule, "epsilon")
    with pytest.raises(ConfigError, match="expected 4 class labels"):
        list(
            sample(model, schedule, sampler, 4, (1, 8, 8), labels=torch.zeros(3, dtype=torch.long))
        )
    with pytest.raises(ConfigError, match="guidance scale"):
        list(
            sample(
                model, schedule, sampler, 2, (1, 8, 8), labels=class_labels(3, 2), guidance_scale=-1
            )
        )
    frames = list(
        sample(model, schedule, sampler, 4, (1, 8, 8), labels=class_labels(3, 4), guidance_scale=2)
    )
    assert frames[-1].x_t.shape == (4, 1, 8, 8) and torch.isfinite(frames[-1].x_t).all()


def test_the_digits_preset_is_class_conditional_unless_asked_not_to_be():
    assert preset_config("digits").model.num_classes == 10
    assert preset_config("digits", class_conditional=False).model.num_classes == 0
    assert preset_config("moons").model.kind == "mlp"
    with pytest.raises(ConfigError, match="label dropout"):
        TrainConfig(label_dropout=1.0)


def test_label_dropout_replaces_that_share_of_labels_by_no_label():
    config = preset_config("digits", max_steps=1, max_minutes=None, label_dropout=0.25)
    trainer = Trainer(config)
    drawn = trainer._draw_batch(5000)  # the step's own draws: which labels are dropped
    index = drawn.index
    labels = trainer._labels_for(index, drawn.label_dropped)
    dropped = labels == 10
    assert torch.equal(dropped, drawn.label_dropped)
    assert 0.22 < dropped.float().mean() < 0.28
    kept = ~dropped
    assert torch.equal(labels[kept], trainer.dataset.labels[index][kept])


def test_a_conditional_model_needs_labelled_data():
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    config = TrainConfig(
        data="folder", image_size=8, model=UNetConfig(**SMALL, num_classes=2), max_steps=1
    )
    with pytest.raises(ConfigError, match="no class labels"):
        Trainer(config, dataset=Dataset("folder", "images", data))
    labelled = Dataset("folder", "images", data, labels=torch.arange(16) % 4)
    with pytest.raises(ConfigError, match="4 classes"):
        Trainer(config, dataset=labelled)
    # no model given: conditional on the data's classes unless class_conditional is off
    trainer = Trainer(TrainConfig(data="folder", image_size=8, max_steps=1), dataset=labelled)
    assert trainer.config.model.num_classes == 4
    trainer = Trainer(
        TrainConfig(data="folder", image_size=8, max_steps=1, class_conditional=False),
        dataset=labelled,
    )
    assert trainer.config.model.num_classes == 0


def test_a_conditional_model_learns_to_draw_the_class_it_is_asked_for(tmp_path):
    """Class 0 = dark squares, class 1 = bright ones. After a short training the model draws
    dark images for label 0 and bright ones for label 1; the checkpoint keeps the classes."""
    n = 256
    labels = torch.arange(n) % 2
    level = torch.where(labels == 1, 0.8, -0.8)[:, None, None, None]
    data = level + 0.05 * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        data="squares",
        image_size=8,
        model=UNetConfig(**SMALL, num_classes=2),
        schedule=ScheduleConfig("cosine", 100),
        batch_size=32,
        learning_rate=3e-3,
        warmup_steps=10,
        max_steps=600,  # 400 left one of four guided samples borderline on some CPUs
        max_minutes=None,
        ema_decay=0.9,
    )
    trainer = Trainer(
        config, dataset=Dataset("squares", "images", data.clamp(-1, 1), labels=labels)
    )
    for _ in trainer.run():
        pass
    path = tmp_path / "squares.safetensors"
    save_checkpoint(path, trainer.checkpoint())
    ckpt = load_checkpoint(path)
    assert ckpt.model_config.num_classes == 2
    sampler = SamplerConfig("ddim", 20, "trailing", clip_sample=True)
    dark = sample_checkpoint(ckpt, 8, sampler, label=0)
    bright = sample_checkpoint(ckpt, 8, sampler, label=1)
    # (an unconditional model would draw half dark, half bright: means near 0)
    assert dark.mean() < -0.3 and bright.mean() > 0.3, (dark.mean(), bright.mean())
    both = sample_checkpoint(ckpt, 8, sampler, guidance_scale=DEFAULT_GUIDANCE_SCALE)
    means = both.reshape(8, -1).mean(axis=1)
    assert (means[0::2] < 0).all() and (means[1::2] > 0).all()  # every class in turn


def test_loading_a_conditional_checkpoint_imports_nothing_heavy(tmp_path):
    """Loading checks shapes on a net built on the meta device; a random fill there would go
    through torch._refs and import sympy and torch._dynamo (1-2 s of the app's start-up,
    which loads the shipped class-conditional digits model)."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Trainer(preset_config("digits", max_steps=1)).checkpoint())
    code = (
        "import sys\n"
        "from diffusion_studio.core.checkpoint import load_checkpoint\n"
        f"ckpt = load_checkpoint({str(path)!r})\n"
        "print(ckpt.model_config.num_classes, 'sympy' in sys.modules, "
        "'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["10", "False", "False"]

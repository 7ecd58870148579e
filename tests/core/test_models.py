"""Tests for core.models: shapes, config round-trips, init, validation, training, bf16."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.models import (
    MLPConfig,
    MLPDenoiser,
    UNet,
    UNetConfig,
    build_model,
    count_parameters,
    model_config_from_dict,
    timestep_embedding,
)

TINY = {"channels": (8, 16), "norm_groups": 4, "attention_heads": 2}


def _tiny(**kw: object) -> UNetConfig:
    return UNetConfig(**{**TINY, **kw})


def _randomise_output_layer(model: torch.nn.Module) -> None:
    """The output layer starts at zero; give it weights so outputs depend on everything."""
    layer = model.conv_out if isinstance(model, UNet) else model.out
    torch.nn.init.normal_(layer.weight, std=0.1)
    torch.nn.init.normal_(layer.bias, std=0.1)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("image_size", [16, 28, 32])
@pytest.mark.parametrize("pixel_unshuffle", [1, 2])
def test_unet_output_has_input_shape(in_channels: int, image_size: int, pixel_unshuffle: int):
    torch.manual_seed(0)
    cfg = _tiny(in_channels=in_channels, image_size=image_size, pixel_unshuffle=pixel_unshuffle)
    model = build_model(cfg)
    assert isinstance(model, UNet)
    _randomise_output_layer(model)
    x = torch.randn(3, in_channels, image_size, image_size)
    out = model(x, torch.tensor([0, 500, 999]))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_unet_three_levels_and_two_layers_per_level():
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(8, 16, 16), layers_per_level=2, norm_groups=4, attention_heads=4)
    model = build_model(cfg)
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([1, 2])).shape == x.shape
    # decoder has one block more per level than the encoder
    assert [len(level.blocks) for level in model.down_levels] == [2, 2, 2]
    assert [len(level.blocks) for level in model.up_levels] == [3, 3, 3]


def test_attention_only_at_lowest_resolution():
    model = build_model(UNetConfig(channels=(8, 16, 16), norm_groups=4, attention_heads=2))
    assert [lvl.attentions is not None for lvl in model.down_levels] == [False, False, True]
    assert [lvl.attentions is not None for lvl in model.up_levels] == [True, False, False]
    assert model.mid_attn is not None
    no_attn = build_model(_tiny(attention_heads=0))
    assert no_attn.mid_attn is None
    assert count_parameters(no_attn) < count_parameters(build_model(_tiny()))


def test_int_timestep_is_broadcast():
    torch.manual_seed(0)
    model = build_model(_tiny())
    _randomise_output_layer(model)
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(model(x, 7), model(x, torch.full((4,), 7, dtype=torch.long)))


def test_output_depends_on_timestep():
    torch.manual_seed(0)
    model = build_model(_tiny())
    _randomise_output_layer(model)
    x = torch.randn(1, 1, 16, 16).expand(2, -1, -1, -1)
    out = model(x, torch.tensor([0, 999]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_unet_rejects_wrong_input():
    model = build_model(_tiny(pixel_unshuffle=2))
    with pytest.raises(ConfigError, match="30x30 is not divisible by 4"):
        model(torch.randn(1, 1, 30, 30), 0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]))


def test_mlp_output_has_input_shape():
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=32, layers=2, time_embed_dim=16))
    assert isinstance(model, MLPDenoiser)
    _randomise_output_layer(model)
    x = torch.randn(10, 2)
    out = model(x, torch.randint(0, 1000, (10,)))
    assert out.shape == (10, 2)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model(torch.randn(10, 3), 0)


# --------------------------------------------------------------------------- time embedding


def test_timestep_embedding_matches_diffusers():
    diffusers_embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0, 1, 17, 500, 999])
    expected = diffusers_embeddings.get_timestep_embedding(
        t, 32, flip_sin_to_cos=True, downscale_freq_shift=0
    )
    torch.testing.assert_close(timestep_embedding(t, 32), expected)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "cfg",
    [
        UNetConfig(),
        UNetConfig(in_channels=3, image_size=32, channels=(16, 32, 64, 64), pixel_unshuffle=2),
        UNetConfig(dropout=0.1, attention_heads=0, layers_per_level=2),
        MLPConfig(),
        MLPConfig(dim=3, hidden=64, layers=5, time_embed_dim=8),
    ],
)
def test_config_round_trip_through_json(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert model_config_from_dict(d) == cfg
    assert type(cfg).from_dict(d) == cfg


def test_unet_config_accepts_list_channels_and_stays_hashable():
    cfg = UNetConfig(channels=[8, 16], norm_groups=4)
    assert cfg.channels == (8, 16)
    assert hash(cfg) == hash(UNetConfig(channels=(8, 16), norm_groups=4))


@pytest.mark.parametrize(
    "cfg",
    [_tiny(pixel_unshuffle=2, in_channels=3, dropout=0.1), MLPConfig(hidden=16, layers=2)],
)
def test_rebuilt_model_loads_state_dict_and_matches(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomise_output_layer(model)
    model.eval()
    rebuilt = build_model(model_config_from_dict(json.loads(json.dumps(cfg.to_dict()))))
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    rebuilt.eval()
    if isinstance(cfg, UNetConfig):
        x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    else:
        x = torch.randn(5, cfg.dim)
    t = torch.arange(x.shape[0]) * 100
    out = model(x, t)
    assert out.abs().max() > 0
    torch.testing.assert_close(rebuilt(x, t), out, rtol=0, atol=0)


def test_untrained_models_output_zero():
    torch.manual_seed(0)
    unet = build_model(_tiny(pixel_unshuffle=2))
    assert torch.count_nonzero(unet(torch.randn(2, 1, 28, 28), torch.tensor([3, 900]))) == 0
    mlp = build_model(MLPConfig(hidden=16))
    assert torch.count_nonzero(mlp(torch.randn(4, 2), 10)) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 29}, r"image size 29 is not divisible by 2 .*use 28 or 30"),
        (
            {"image_size": 30, "channels": (8, 16, 16), "pixel_unshuffle": 1},
            r"image size 30 is not divisible by 4 \(2 downsamplings x pixel-unshuffle 1\)",
        ),
        (
            {"image_size": 28, "channels": (8, 16, 16), "pixel_unshuffle": 2},
            r"image size 28 is not divisible by 8 .*use 24 or 32",
        ),
        ({"in_channels": 2}, r"in_channels must be 1 .* or 3 .*got 2"),
        ({"channels": (8, 0)}, r"positive integer, got 0"),
        ({"channels": ()}, r"non-empty"),
        ({"channels": (8, 18)}, r"norm_groups 4 does not divide width 18"),
        ({"attention_heads": 3}, r"attention_heads 3 does not divide .* width 16"),
        ({"pixel_unshuffle": 3}, r"pixel_unshuffle must be one of .*got 3"),
        ({"layers_per_level": 0}, r"layers_per_level must be at least 1, got 0"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"image_size": "28"}, r"image_size must be an integer, got '28'"),
        ({"image_size": True}, r"image_size must be an integer, got True"),
        ({"norm_groups": 0}, r"norm_groups must be at least 1, got 0"),
    ],
)
def test_invalid_unet_config_raises(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _tiny(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, r"dim must be at least 1, got 0"),
        ({"hidden": -4}, r"hidden must be at least 1, got -4"),
        ({"layers": 0}, r"layers must be at least 1, got 0"),
        ({"time_embed_dim": 7}, r"time_embed_dim must be even .*got 7"),
        ({"hidden": 1.5}, r"hidden must be an integer, got 1.5"),
    ],
)
def test_invalid_mlp_config_raises(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MLPConfig(**kwargs)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "transformer"}, r"unknown model kind 'transformer'"),
        ({"image_size": 28}, r"no 'kind'"),
        ({"kind": "unet", "widths": [8]}, r"unknown key\(s\) \['widths'\]"),
        ({"kind": "mlp", "hidden": "big"}, r"hidden must be an integer, got 'big'"),
        ({"kind": "unet", "channels": "32,64"}, r"channels must be .*got '32,64'"),
        ({"kind": "unet", "channels": [32, 64.0]}, r"positive integer, got 64.0"),
        ([("kind", "unet")], r"must be a dict, got list"),
    ],
)
def test_model_config_from_dict_rejects_bad_input(d, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(d)


def test_from_dict_of_one_class_rejects_the_other_kind():
    with pytest.raises(ConfigError, match=r"UNetConfig.kind must be 'unet', got 'mlp'"):
        UNetConfig.from_dict({"kind": "mlp"})


def test_build_model_rejects_non_config():
    with pytest.raises(ConfigError, match="not a model config"):
        build_model({"kind": "unet"})  # type: ignore[arg-type]


def test_default_digits_unet_size():
    n = count_parameters(build_model(UNetConfig()))
    assert 500_000 <= n <= 1_500_000


# --------------------------------------------------------------------------- training, bf16


@pytest.mark.parametrize(
    "cfg", [_tiny(pixel_unshuffle=2), MLPConfig(hidden=32, layers=2)], ids=["unet", "mlp"]
)
def test_a_few_steps_reduce_the_loss(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    if isinstance(cfg, UNetConfig):
        x = torch.randn(4, 1, 16, 16)
    else:
        x = torch.randn(64, 2)
    t = torch.randint(0, 1000, (x.shape[0],))
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.mse_loss(model(x, t), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(0)
    model = build_model(_tiny())
    _randomise_output_layer(model)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([5, 600])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x, t), atol=0.1, rtol=0.1)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

"""Checkpoint format: round trip, atomic writes, and refusal of bad or unsafe files."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from diffusion_studio.core.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    build_model_from_checkpoint,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
)
from diffusion_studio.core.errors import CheckpointError
from diffusion_studio.core.models import MLPConfig, UNetConfig, build_model
from diffusion_studio.core.schedule import ScheduleConfig


def make_ckpt(model_config=None) -> Checkpoint:
    model_config = model_config or MLPConfig(hidden=16, layers=1)
    torch.manual_seed(0)
    model = build_model(model_config)
    return Checkpoint(
        model_config=model_config,
        schedule_config=ScheduleConfig("cosine", 100),
        prediction_type="v",
        model_state=model.state_dict(),
        data={"name": "moons", "kind": "points"},
        training={"step": 3},
        training_state={"rng/train": torch.Generator().get_state()},
    )


def test_round_trip(tmp_path):
    ckpt = make_ckpt(UNetConfig(channels=(8, 16), attention_heads=2))
    path = save_checkpoint(tmp_path / "m.safetensors", ckpt)
    loaded = load_checkpoint(path)
    assert loaded.model_config == ckpt.model_config
    assert loaded.schedule_config == ckpt.schedule_config
    assert loaded.prediction_type == "v" and loaded.training == {"step": 3}
    assert loaded.sample_shape == (1, 28, 28) and loaded.can_resume
    assert loaded.meta["versions"]["torch"]
    for name, value in ckpt.model_state.items():
        torch.testing.assert_close(loaded.model_state[name], value)
    model = build_model_from_checkpoint(loaded)
    assert not model.training
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([1, 2])).shape == x.shape


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_ckpt())
    save_checkpoint(path, make_ckpt())
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_ckpt())
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, make_ckpt(MLPConfig(hidden=8, layers=1)))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "m.safetensors", make_ckpt())


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[: len(b) // 2], "truncated|damaged"),
        (lambda b: b[:5], "truncated"),
        (lambda b: b"", "empty or truncated"),
        (lambda b: b[:8] + b"{not json" + b[17:], "damaged header"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "not a safetensors file"),
        (lambda b: b"hello, I am a text file pretending", "not a safetensors"),
    ],
)
def test_damaged_files_refused(tmp_path, damage, match):
    good = checkpoint_bytes(make_ckpt())
    path = write(tmp_path / "bad.safetensors", damage(good))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def _with_config(tmp_path, edit):
    ckpt = make_ckpt()
    config = ckpt.config_json()
    edit(config)
    tensors = {"model/" + k: v for k, v in ckpt.model_state.items()}
    path = tmp_path / "edited.safetensors"
    save_file(
        tensors,
        str(path),
        metadata={
            "format": "diffusion-studio",
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config),
        },
    )
    return path


def test_wrong_shapes_refused(tmp_path):
    path = _with_config(tmp_path, lambda c: c["model"].update(hidden=32))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path)


def test_other_model_kind_refused(tmp_path):
    path = _with_config(tmp_path, lambda c: c.update(model=UNetConfig().to_dict()))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path)


def test_bad_config_values_refused(tmp_path):
    path = _with_config(tmp_path, lambda c: c["schedule"].update(num_timesteps=0))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(path)
    path = _with_config(tmp_path, lambda c: c.update(prediction_type="score"))
    with pytest.raises(CheckpointError, match="score"):
        load_checkpoint(path)


def test_newer_format_refused(tmp_path):
    ckpt = make_ckpt()
    path = tmp_path / "new.safetensors"
    save_file(
        {"model/" + k: v for k, v in ckpt.model_state.items()},
        str(path),
        metadata={
            "format": "diffusion-studio",
            "format_version": "99",
            "config": json.dumps(ckpt.config_json()),
        },
    )
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_foreign_safetensors_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a Diffusion Studio checkpoint"):
        load_checkpoint(path)


def test_missing_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_legacy_torch_file_loads_with_weights_only(tmp_path):
    ckpt = make_ckpt()
    path = tmp_path / "old.pt"
    torch.save({"config": json.dumps(ckpt.config_json()), "model": ckpt.model_state}, path)
    loaded = load_checkpoint(path)
    assert loaded.model_config == ckpt.model_config and not loaded.can_resume


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"config": "{}", "model": {"w": _Payload(str(marker))}}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="never run"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "evil.ckpt"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


# ------------------------------------------------------------- issue 18: refusals, round trips


def test_training_state_and_data_round_trip(tmp_path):
    """Every training tensor (any dtype, any shape) and the data description come back."""
    ckpt = make_ckpt()
    ckpt.training = {"step": 7, "elapsed_s": 1.5, "optimizer": {"groups": [{"lr": 0.01}]}}
    ckpt.training_state = {
        "rng/train": torch.Generator().manual_seed(3).get_state(),
        "raw/net.0.weight": torch.randn(4, 3),
        "optim/0/exp_avg": torch.randn(2, 2, dtype=torch.float64),
        "history/step": torch.arange(5, dtype=torch.int64),
    }
    ckpt.data = {"name": "digits", "kind": "images", "image_size": 28, "channels": 1}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "t.safetensors", ckpt))
    assert loaded.data == ckpt.data
    assert loaded.training == ckpt.training
    assert sorted(loaded.training_state) == sorted(ckpt.training_state)
    for name, value in ckpt.training_state.items():
        assert loaded.training_state[name].dtype == value.dtype, name
        assert torch.equal(loaded.training_state[name], value), name


def test_non_finite_weights_refused(tmp_path):
    for bad in (float("nan"), float("inf")):
        ckpt = make_ckpt()
        name = next(k for k, v in ckpt.model_state.items() if v.is_floating_point())
        ckpt.model_state = dict(ckpt.model_state)
        ckpt.model_state[name] = ckpt.model_state[name].clone()
        ckpt.model_state[name].view(-1)[0] = bad
        path = write(tmp_path / "nan.safetensors", checkpoint_bytes(ckpt))
        with pytest.raises(CheckpointError, match=f"non-finite values in weight '{name}'"):
            load_checkpoint(path)


def _with_metadata(tmp_path, **changes):
    ckpt = make_ckpt()
    metadata = {
        "format": "diffusion-studio",
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(ckpt.config_json()),
    } | changes
    metadata = {k: v for k, v in metadata.items() if v is not None}
    path = tmp_path / "meta.safetensors"
    save_file({"model/" + k: v for k, v in ckpt.model_state.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "version,match",
    [("0", "invalid format version 0"), ("-3", "invalid format version -3"), ("one", "unreadable")],
)
def test_format_versions_below_1_or_unreadable_refused(tmp_path, version, match):
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(_with_metadata(tmp_path, format_version=version))


def test_missing_config_refused(tmp_path):
    with pytest.raises(CheckpointError, match="missing or damaged config"):
        load_checkpoint(_with_metadata(tmp_path, config=None))


@pytest.mark.parametrize("key", ["model", "schedule", "prediction_type"])
def test_config_missing_a_key_refused(tmp_path, key):
    path = _with_config(tmp_path, lambda c: c.pop(key))
    with pytest.raises(CheckpointError, match=f"config lacks '{key}'"):
        load_checkpoint(path)


def test_legacy_file_with_non_tensor_values_refused(tmp_path):
    ckpt = make_ckpt()
    state = dict(ckpt.model_state)
    state[next(iter(state))] = [1.0, 2.0]  # a list, allowed by weights_only, not a weight
    path = tmp_path / "lists.pt"
    torch.save({"config": json.dumps(ckpt.config_json()), "model": state}, path)
    with pytest.raises(CheckpointError, match="non-tensor weights"):
        load_checkpoint(path)


def test_legacy_file_with_wrong_shapes_refused(tmp_path):
    ckpt = make_ckpt()
    state = dict(ckpt.model_state)
    name = next(iter(state))
    state[name] = torch.zeros(3, 3, 3)
    path = tmp_path / "shapes.pt"
    torch.save({"config": ckpt.config_json(), "model": state}, path)
    with pytest.raises(CheckpointError, match=f"weight '{name}' has shape \\[3, 3, 3\\]"):
        load_checkpoint(path)
    del state[name]
    torch.save({"config": ckpt.config_json(), "model": state}, path)
    with pytest.raises(CheckpointError, match="1 weight\\(s\\) missing"):
        load_checkpoint(path)

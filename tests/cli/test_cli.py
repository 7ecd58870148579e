"""The CLI as a user runs it: subprocesses on tiny settings, checking the files they write."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_studio.core.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    return subprocess.run(
        [sys.executable, "-m", "diffusion_studio.app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffusion-studio: error:"), result.stderr
    assert needle in lines[0]


def test_version_and_help(tmp_path):
    assert run("--version", cwd=tmp_path).stdout.startswith("diffusion-studio ")
    help_text = run("--help", cwd=tmp_path).stdout
    for word in ("schedule", "forward", "train", "sample", "prod"):
        assert word in help_text


def test_schedule_csv(tmp_path):
    result = run("schedule", "--kind", "cosine", "--steps", "50", "--out", "s.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 50
    assert list(rows[0]) == [
        "t",
        "beta",
        "alpha_bar",
        "sqrt_alpha_bar",
        "sqrt_one_minus_alpha_bar",
        "log_snr",
    ]
    assert [int(r["t"]) for r in rows] == list(range(50))
    ab = np.array([float(r["alpha_bar"]) for r in rows])
    beta = np.array([float(r["beta"]) for r in rows])
    np.testing.assert_allclose(ab, np.cumprod(1 - beta), rtol=1e-12)


def test_forward_gif(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
        tmp_path / "in.png"
    )
    result = run(
        "forward",
        "in.png",
        "--steps",
        "100",
        "--frames",
        "12",
        "--gif",
        "f.gif",
        "--png-dir",
        "frames",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    gif = Image.open(tmp_path / "f.gif")
    assert gif.n_frames == 12
    assert len(list((tmp_path / "frames").glob("*.png"))) == 12
    # t is written on every frame, in a white band above the picture (upscaled 4x: 160 px)
    band = gif.size[1] - 4 * 40
    assert band > 8
    for i in (0, 11):
        gif.seek(i)
        top = np.asarray(gif.convert("L"))[:band].astype(int)
        assert (top > 200).mean() > 0.5 and (top < 100).sum() > 20  # dark letters on white


def test_train_sample_end_to_end_and_resume(tmp_path):
    result = run(
        "train",
        "--data",
        "moons",
        "--steps",
        "30",
        "--seed",
        "1",
        "--out",
        "m.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.training["step"] == 30 and ckpt.is_points
    result = run(
        "train",
        "--data",
        "moons",
        "--resume",
        "m.safetensors",
        "--steps",
        "40",
        "--out",
        "m.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "m.safetensors").training["step"] == 40
    result = run(
        "sample",
        "--checkpoint",
        "m.safetensors",
        "--sampler",
        "ddpm",
        "--steps",
        "20",
        "--n",
        "64",
        "--gif",
        "r.gif",
        "--npy",
        "s.npy",
        "--frames",
        "10",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (64, 2) and samples.dtype == np.float32
    assert Image.open(tmp_path / "r.gif").n_frames >= 2


def test_train_image_model_and_sample_grid(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = run(
        "train",
        "--data",
        str(folder),
        "--image-size",
        "16",
        "--channels",
        "3",
        "--model-size",
        "small",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--timesteps",
        "50",
        "--out",
        "img.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    result = run(
        "sample",
        "--checkpoint",
        "img.safetensors",
        "--steps",
        "5",
        "--n",
        "4",
        "--grid",
        "g.png",
        "--npy",
        "s.npy",
        "--gif",
        "r.gif",
        "--gif-view",
        "both",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "s.npy").shape == (4, 3, 16, 16)
    assert Image.open(tmp_path / "g.png").mode == "RGB"
    gif = Image.open(tmp_path / "r.gif")
    assert gif.n_frames >= 2 and gif.size[0] > gif.size[1]  # x_t and x0 side by side


@pytest.mark.parametrize(
    "args,needle",
    [
        (["schedule", "--steps", "0", "--out", "x.csv"], "T = 0"),
        (["schedule", "--steps", "1000000000", "--out", "x.csv"], "too large"),
        (["forward", "missing.png", "--gif", "f.gif"], "not found"),
        (["forward", "text.png", "--gif", "f.gif"], "not an image"),
        (["forward", "truncated.png", "--gif", "f.gif"], "truncated.png"),
        (["sample", "--checkpoint", "missing.safetensors", "--npy", "s.npy"], "does not exist"),
        (["sample", "--checkpoint", "text.png", "--npy", "s.npy"], "text.png"),
        (
            ["sample", "--checkpoint", "wrong.safetensors", "--npy", "s.npy"],
            "not a Diffusion Studio",
        ),
        (["train", "--data", "nowhere", "--steps", "5", "--out", "o.safetensors"], "nowhere"),
        (["train", "--data", "moons", "--steps", "1000000000", "--out", "o.safetensors"], "steps"),
        (["train", "--data", "moons", "--out", "o.safetensors"], "--steps"),
        (["train", "--data", "empty", "--steps", "5", "--out", "o.safetensors"], "empty"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, needle):
    (tmp_path / "text.png").write_text("this is not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    (tmp_path / "empty").mkdir()
    result = run(*args, cwd=tmp_path)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "o.safetensors").exists()


def test_sample_steps_out_of_range(tmp_path):
    result = run(
        "train",
        "--data",
        "moons",
        "--steps",
        "2",
        "--timesteps",
        "50",
        "--out",
        "m.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    result = run(
        "sample", "--checkpoint", "m.safetensors", "--steps", "51", "--npy", "s.npy", cwd=tmp_path
    )
    assert_one_line_error(result, "1..50")


def test_train_refuses_to_overwrite_without_flag(tmp_path):
    (tmp_path / "o.safetensors").write_bytes(b"precious")
    result = run("train", "--data", "moons", "--steps", "2", "--out", "o.safetensors", cwd=tmp_path)
    assert_one_line_error(result, "--overwrite")
    assert (tmp_path / "o.safetensors").read_bytes() == b"precious"


@pytest.mark.slow
def test_sigkill_during_training_never_leaves_a_broken_checkpoint(tmp_path):
    """Kill a training run (saving every step) at random moments; the checkpoint always loads
    and the run resumes to the end."""
    import random
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rng = random.Random(0)
    out = tmp_path / "k.safetensors"
    command = [
        sys.executable,
        "-m",
        "diffusion_studio.app.cli",
        "train",
        "--data",
        "moons",
        "--steps",
        "100000",
        "--save-every",
        "1",
        "--out",
        str(out),
    ]
    steps_seen = []
    for _attempt in range(5):
        args = command + (["--resume", str(out)] if out.exists() else [])
        before = out.stat().st_mtime_ns if out.exists() else 0
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # wait until this run is saving (every step), then kill it at a random moment
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not out.exists() or out.stat().st_mtime_ns == before
        ):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if out.exists():
            ckpt = load_checkpoint(out)  # must never raise
            steps_seen.append(ckpt.training["step"])
    assert steps_seen and steps_seen == sorted(steps_seen) and steps_seen[-1] > 0
    result = run(
        "train",
        "--data",
        "moons",
        "--resume",
        str(out),
        "--steps",
        str(steps_seen[-1] + 5),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(out).training["step"] == steps_seen[-1] + 5


def test_interrupt_saves_the_run(tmp_path):
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "i.safetensors"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffusion_studio.app.cli",
            "train",
            "--data",
            "moons",
            "--steps",
            "1000000",
            "--save-every",
            "20",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background by a shell (`make test &`) inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler: give the child the
        # default disposition, as a terminal's Ctrl-C would find it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out.exists(), "training never saved"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: saved step" in err and "Traceback" not in err
    assert load_checkpoint(out).training["step"] >= 20


def test_export_for_sampling_is_small_and_samples(tmp_path):
    result = run(
        "train", "--data", "moons", "--steps", "3", "--out", "full.safetensors", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    result = run("export", "full.safetensors", "--out", "slim.safetensors", "--half", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    slim = load_checkpoint(tmp_path / "slim.safetensors")
    assert not slim.can_resume and slim.meta["trained_steps"] == 3
    assert (tmp_path / "slim.safetensors").stat().st_size < (
        tmp_path / "full.safetensors"
    ).stat().st_size / 4
    result = run(
        "sample", "--checkpoint", "slim.safetensors", "--steps", "4", "--npy", "s.npy", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


def run_without_display(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command as on a machine with no display: the GUI cannot start, so a run that
    would start it ends at once with "no display found"."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "diffusion_studio.app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gui_without_display_says_so(tmp_path):
    assert_one_line_error(run_without_display(cwd=tmp_path), "no display")


def test_a_mistyped_command_is_refused_with_a_suggestion(tmp_path):
    # with a display the GUI would have started before (issue 14, item 6)
    result = run("sampel", "--n", "3", cwd=tmp_path, timeout=60)
    assert_one_line_error(result, "unknown command 'sampel' (did you mean 'sample'?)")
    assert_one_line_error(run("trian", cwd=tmp_path, timeout=60), "did you mean 'train'?")
    result = run("zzz", cwd=tmp_path, timeout=60)
    assert_one_line_error(result, "unknown command 'zzz' (commands: schedule, forward,")


def test_a_missing_file_is_refused_and_existing_ones_start_the_app(tmp_path):
    assert_one_line_error(run("missing.png", cwd=tmp_path, timeout=60), "'missing.png'")
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    result = run(str(image), "nothere.safetensors", cwd=tmp_path, timeout=60)
    assert_one_line_error(result, "no such file or folder: 'nothere.safetensors'")
    assert_one_line_error(run(str(image), "--n", cwd=tmp_path, timeout=60), "unknown option")
    # an image, a folder: accepted, so the app starts (and, with no display, says so)
    for existing in (str(image), str(tmp_path), "."):
        assert_one_line_error(run_without_display(existing, cwd=tmp_path), "no display")


def test_sample_a_diffusers_folder_with_its_own_sampler(tmp_path):
    """With no sampler options, a diffusers model samples with its scheduler's settings and
    gives what diffusers' own pipeline gives for the same seed."""
    diffusers = pytest.importorskip("diffusers")
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(100))
    pipeline.save_pretrained(tmp_path / "tiny")
    pipeline.set_progress_bar_config(disable=True)
    result = run(
        "sample",
        "--checkpoint",
        "tiny",
        "--steps",
        "10",
        "--n",
        "2",
        "--seed",
        "3",
        "--npy",
        "s.npy",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected = pipeline(
        batch_size=2,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=10,
        output_type="np",
    ).images
    ours = np.clip(np.load(tmp_path / "s.npy") / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def _write_blank_png(path: Path, width: int, height: int) -> None:
    """A black 1-bit PNG of any size, built by hand with its rows streamed through zlib."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    with path.open("wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        for _ in range(height // 100):
            file.write(chunk(b"IDAT", compressor.compress(row * 100)))
        file.write(chunk(b"IDAT", compressor.compress(row * (height % 100)) + compressor.flush()))
        file.write(chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["forward", "fifo.png", "--gif", "f.gif"], "named pipe"),
        (["forward", "dangling.png", "--gif", "f.gif"], "broken symbolic link"),
        (["forward", "loop.png", "--gif", "f.gif"], "symbolic link loop"),
        (["forward", "d.png", "--gif", "f.gif"], "is a folder"),
        # 8000 x 8000 = 64 megapixels: under Pillow's bomb limit, over our decoding cap
        (["forward", "huge.png", "--gif", "f.gif"], "8000x8000 pixels (64 megapixels)"),
        (["train", "--data", "allbad", "--steps", "5", "--out", "o.safetensors"], "none of the"),
    ],
    ids=["fifo", "dangling-link", "link-loop", "folder-named-png", "huge-png", "all-bad-folder"],
)
def test_odd_files_give_one_line_and_exit_2(tmp_path, args, needle):
    """Named pipes (never opened, so nothing hangs), links to nowhere, a folder named like an
    image, a huge image and a folder of nothing but such entries: one line, exit 2."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes need a POSIX system")
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    (tmp_path / "d.png").mkdir()
    _write_blank_png(tmp_path / "huge.png", 8000, 8000)
    bad = tmp_path / "allbad"
    bad.mkdir()
    os.mkfifo(bad / "pipe.png")
    os.symlink(bad / "gone.jpg", bad / "gone_link.jpg")
    (bad / "text.png").write_text("not an image")
    result = run(*args, cwd=tmp_path, timeout=120)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "f.gif").exists()


def test_train_refuses_a_batch_too_big_for_memory_before_allocating_it(tmp_path):
    """Batch 65536 of 512x512 RGB images (tens of TB by the estimate, more than any machine
    has) is refused by the memory estimate before the first step: one line naming the batch
    and the largest batch that fits, exit 2, and the process stays small (no huge allocation;
    its peak RSS as the OS counts it)."""
    from diffusion_studio.core.training import MAX_BATCH_SIZE

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(folder / "a.png")
    result = run(
        *("train", "--data", str(folder), "--image-size", "512", "--channels", "3"),
        *("--steps", "5", "--batch-size", str(MAX_BATCH_SIZE), "--out", "o.safetensors"),
        cwd=tmp_path,
        timeout=120,
    )
    err = result.stderr
    assert_one_line_error(result, f"batch {MAX_BATCH_SIZE} of 512x512 images needs about")
    assert "use a batch of at most" in err and "free" in err
    assert not (tmp_path / "o.safetensors").exists()
    if sys.platform.startswith("linux"):
        import resource

        # ru_maxrss of the largest child waited for so far (KB on Linux): this one and the
        # earlier tiny CLI runs; a real attempt at the batch would need terabytes.
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        assert peak_kb < 4 * 1024**2, peak_kb


def test_digits_train_class_conditional_and_sample_one_digit(tmp_path):
    """The digits are class-conditional by default (--unconditional turns it off); `sample`
    draws one digit with --label and guides with --guidance; an unconditional model refuses
    both with one line."""
    small = ["--model-size", "small", "--steps", "2", "--batch-size", "4", "--timesteps", "50"]
    result = run("train", "--data", "digits", *small, "--out", "c.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "c.safetensors").model_config.num_classes == 10
    result = run(
        "train",
        "--data",
        "digits",
        *small,
        "--unconditional",
        "--out",
        "u.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "u.safetensors").model_config.num_classes == 0

    def sample_npy(checkpoint: str, *extra: str) -> subprocess.CompletedProcess:
        return run(
            "sample",
            "--checkpoint",
            checkpoint,
            "--sampler",
            "flow-euler",  # the digits preset trains flow matching
            "--steps",
            "3",
            "--n",
            "3",
            "--npy",
            "s.npy",
            *extra,
            cwd=tmp_path,
        )

    arrays = {}
    for extra in ((), ("--label", "7"), ("--label", "7", "--guidance", "4")):
        result = sample_npy("c.safetensors", *extra)
        assert result.returncode == 0, result.stderr
        arrays[extra] = np.load(tmp_path / "s.npy")
        assert arrays[extra].shape == (3, 1, 28, 28)
    assert not np.array_equal(arrays[()], arrays[("--label", "7")])
    assert not np.array_equal(arrays[("--label", "7")], arrays[("--label", "7", "--guidance", "4")])
    assert_one_line_error(sample_npy("c.safetensors", "--label", "10"), "0 to 9")
    assert_one_line_error(sample_npy("c.safetensors", "--guidance", "-1"), "guidance scale")
    assert_one_line_error(sample_npy("u.safetensors", "--label", "3"), "not class-conditional")
    assert_one_line_error(sample_npy("u.safetensors", "--guidance", "3"), "unconditional")

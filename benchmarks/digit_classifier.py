"""A small CNN digit classifier that judges generated digits.

Trained once on the built-in digits (`core.data.load_digits()`) with a fixed, seeded
4000 / 1000 train / validation split; its weights ship beside this file as
`digit_classifier.safetensors` (the safetensors metadata holds the split seed, the
validation accuracy and the command that made it). Re-make them with

    python -m benchmarks.digit_classifier --train

Inputs follow the samples' convention: float32 (N, 1, 28, 28) in [-1, 1], white strokes (+1)
on a black background (-1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion_studio.core.data import (
    DIGITS_HELD_OUT,
    DIGITS_SPLIT_SEED,
    digits_split_order,
    load_digits,
)
from diffusion_studio.core.errors import CheckpointError

WEIGHTS_PATH = Path(__file__).resolve().parent / "digit_classifier.safetensors"
SPLIT_SEED = DIGITS_SPLIT_SEED
NUM_VAL = DIGITS_HELD_OUT
NUM_TRAIN = 5000 - NUM_VAL
FEATURE_DIM = 128
TRAIN_COMMAND = "python -m benchmarks.digit_classifier --train"


class DigitClassifier(nn.Module):
    """Five 3x3 conv layers (BatchNorm + ReLU), two 2x max-pools, global average pool, linear.

    28x28 -> [16] -> pool -> 14x14 -> [32, 32] -> pool -> 7x7 -> [64, 128] -> mean -> 128 -> 10.
    About 110k parameters.
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 16),
            nn.MaxPool2d(2),
            *block(16, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, FEATURE_DIM),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features: (N, 1, 28, 28) in [-1, 1] -> (N, 128), non-negative."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (N, 1, 28, 28) in [-1, 1] -> (N, 10)."""
        return self.head(self.dropout(self.features(x)))


@dataclass(frozen=True)
class DigitSplit:
    """The fixed split: images float32 (N, 1, 28, 28) in [-1, 1], labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def digits_split(seed: int = SPLIT_SEED) -> DigitSplit:
    """The seeded 4000 / 1000 train / validation split of the built-in digits (core.data's
    split: the shipped digits model trains on the same 4000, `--data digits-train`)."""
    images, labels = load_digits()
    order = digits_split_order(seed)
    x = torch.from_numpy(images[order].astype(np.float32)).unsqueeze(1) / 127.5 - 1.0
    y = torch.from_numpy(labels[order].copy())
    return DigitSplit(x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:])


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(
        n, 1, h, w + 2 * max_shift
    )
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


@torch.no_grad()
def predict(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Softmax probabilities (N, 10) for images (N, 1, 28, 28), in eval mode."""
    model.eval()
    return torch.cat([F.softmax(model(b), dim=1) for b in x.split(batch_size)])


def make_outliers(digits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n images that are not digits, (n, 1, 28, 28) in [-1, 1], four kinds in equal parts.

    Trained towards a uniform class distribution ("outlier exposure", Hendrycks et al. 2019)
    so that the classifier is unsure about what people would not call a digit, instead of
    confidently calling noise an 8: pixel noise of random level and contrast, flat images,
    smooth random blobs (the stroke-like blobs of an undertrained model), and digits cut into
    7x7 patches and shuffled (strokes that do not form a digit).
    """

    def u(size: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=generator)[:, None, None, None]

    k = math.ceil(n / 4)
    noise = u(k, -1.0, 0.5) + u(k, 0.2, 1.5) * torch.randn(k, 1, 28, 28, generator=generator)
    flat = u(k, -1.0, 1.0) + 0.05 * torch.randn(k, 1, 28, 28, generator=generator)
    cells = int(torch.randint(4, 11, (1,), generator=generator))
    field = torch.randn(k, 1, cells, cells, generator=generator)
    field = F.interpolate(field, size=(28, 28), mode="bicubic", align_corners=False)
    blobs = torch.tanh(u(k, 2.0, 6.0) * (field - u(k, 0.0, 1.5)))
    pick = torch.randint(0, digits.shape[0], (k,), generator=generator)
    patches = (
        digits[pick].reshape(k, 1, 4, 7, 4, 7).permute(0, 1, 2, 4, 3, 5).reshape(k, 1, 16, 7, 7)
    )
    shuffled = patches[:, :, torch.randperm(16, generator=generator)]
    scrambled = shuffled.reshape(k, 1, 4, 4, 7, 7).permute(0, 1, 2, 4, 3, 5).reshape(k, 1, 28, 28)
    out = torch.cat([noise, flat, blobs, scrambled])[:n]
    return out.clamp(-1.0, 1.0)


def train_classifier(
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 4e-3,
    seed: int = 0,
    max_shift: int = 2,
    outliers_per_batch: int = 32,
    outlier_weight: float = 0.5,
) -> tuple[DigitClassifier, float]:
    """Train on the fixed split; returns (model in eval mode, validation accuracy).

    loss = CE(digits) + outlier_weight * CE(outliers, uniform) on random shifts of up to
    `max_shift` pixels; AdamW with a one-cycle learning rate.
    """
    split = digits_split()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(NUM_TRAIN / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(NUM_TRAIN, generator=generator)
        for index in order.split(batch_size):
            digits = split.train_images[index]
            outliers = make_outliers(split.train_images, outliers_per_batch, generator)
            x = random_shift(torch.cat([digits, outliers]), max_shift, generator)
            logits = model(x)
            n = len(index)
            digit_loss = F.cross_entropy(logits[:n], split.train_labels[index])
            outlier_loss = -F.log_softmax(logits[n:], dim=1).mean()  # CE to uniform
            loss = digit_loss + outlier_weight * outlier_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        accuracy = validation_accuracy(model, split)
        print(
            f"epoch {epoch + 1}/{epochs}: digit loss {float(digit_loss):.3f}, outlier loss "
            f"{float(outlier_loss):.3f} (uniform = {math.log(10):.3f}), validation accuracy "
            f"{accuracy:.2%} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    model.eval()
    return model, validation_accuracy(model, split)


def validation_accuracy(model: DigitClassifier, split: DigitSplit | None = None) -> float:
    """Share of the 1000 validation digits classified correctly."""
    split = split if split is not None else digits_split()
    probs = predict(model, split.val_images)
    return float((probs.argmax(dim=1) == split.val_labels).float().mean())


def save_classifier(model: DigitClassifier, path: Path, metadata: dict[str, str]) -> None:
    """Write the weights (float32) with string metadata, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)


def load_classifier(path: Path | str = WEIGHTS_PATH) -> DigitClassifier:
    """The shipped classifier in eval mode (raises CheckpointError if the file is missing)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no digit classifier at '{path}': make it with `{TRAIN_COMMAND}`")
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(
            f"the digit classifier '{path}' cannot be loaded ({exc}); re-make it with "
            f"`{TRAIN_COMMAND}`"
        ) from exc
    return model.eval().requires_grad_(False)


def classifier_metadata(path: Path | str = WEIGHTS_PATH) -> dict[str, str]:
    """The metadata stored with the weights (split seed, accuracy, command, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.digit_classifier", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--train", action="store_true", help="train and save the classifier")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args(argv)
    if not args.train:
        model = load_classifier(args.out)
        meta = classifier_metadata(args.out)
        print(json.dumps(meta, indent=2))
        print(f"validation accuracy now: {validation_accuracy(model):.2%}")
        return 0
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    model, accuracy = train_classifier(epochs=args.epochs)
    metadata = {
        "split_seed": str(SPLIT_SEED),
        "num_train": str(NUM_TRAIN),
        "num_val": str(NUM_VAL),
        "val_accuracy": f"{accuracy:.4f}",
        "epochs": str(args.epochs),
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "train_seconds": f"{time.perf_counter() - started:.0f}",
        "torch": torch.__version__,
        "command": TRAIN_COMMAND + ("" if args.epochs == 10 else f" --epochs {args.epochs}"),
    }
    save_classifier(model, args.out, metadata)
    print(f"validation accuracy {accuracy:.2%}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`diffusion-studio --self-check`: prove an installation or bundle works, without a display."""

from __future__ import annotations

import sys


def run_self_check() -> int:
    """Load every shipped resource, build a model and sample a few steps. 0 = all well."""
    import torch

    from core.data import load_digits, load_image, sample_photo_paths
    from core.models import UNetConfig, build_model
    from core.samplers import SamplerConfig, make_sampler
    from core.sampling import sample
    from core.schedule import NoiseSchedule

    checks: list[tuple[str, str]] = []
    try:
        images, labels = load_digits()
        checks.append(
            ("built-in digits", f"{images.shape[0]} images, {len(set(labels.tolist()))} classes")
        )
        for path in sample_photo_paths():
            image = load_image(path, max_side=64)
            checks.append((f"photo {path.name}", f"{image.shape}"))
        schedule = NoiseSchedule.from_kind("cosine", 100)
        model = build_model(UNetConfig(channels=(8, 16), attention_heads=2))
        sampler = make_sampler(SamplerConfig("ddim", 3), schedule, "v")
        frames = list(
            sample(model, schedule, sampler, 2, (1, 28, 28), torch.Generator().manual_seed(0))
        )
        checks.append(("sampling", f"{len(frames)} frames"))
    except Exception as exc:  # noqa: BLE001 - a self-check reports every failure
        for name, result in checks:
            print(f"ok    {name}: {result}")
        print(f"FAIL  {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for name, result in checks:
        print(f"ok    {name}: {result}")
    print("self-check passed")
    return 0

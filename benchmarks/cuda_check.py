"""Check the CUDA path on a machine with an NVIDIA GPU (no GPU: prints why and exits 0).

    python -m benchmarks.cuda_check [--json PATH]

1. `resolve_device("auto")` picks cuda;
2. the shipped digits model gives the same output on the CPU and the GPU (max abs difference
   printed, must be < 5e-3: cuDNN convolutions use TF32 by default, about 1e-3 here);
3. sampling draws every random number from a CPU generator, so DDIM on cuda from the same seed
   equals DDIM on the CPU (max abs difference printed);
4. training speed of the default digits preset, ms per step, CPU (2 threads) and CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from diffusion_studio.core.checkpoint import (
    build_model_from_checkpoint,
    load_checkpoint,
    pretrained_checkpoint_paths,
)
from diffusion_studio.core.device import resolve_device
from diffusion_studio.core.samplers import SamplerConfig
from diffusion_studio.core.sampling import sample_checkpoint
from diffusion_studio.core.training import Trainer, preset_config


def _ms_per_step(device: str, batch: int, steps: int = 30) -> float:
    trainer = Trainer(
        preset_config("digits", batch_size=batch, max_steps=10**6, max_minutes=None, device=device)
    )
    run = trainer.run()
    for _ in range(5):
        next(run)
    if device != "cpu":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        next(run)
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check")
        return 0
    result: dict[str, object] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "auto_device": str(resolve_device("auto")),
    }
    ckpt = load_checkpoint(pretrained_checkpoint_paths()["digits"])
    cpu_model = build_model_from_checkpoint(ckpt, "cpu")
    gpu_model = build_model_from_checkpoint(ckpt, "cuda")
    x = torch.randn(16, *ckpt.sample_shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((16,), 500)
    with torch.inference_mode():
        diff = (cpu_model(x, t) - gpu_model(x.cuda(), t.cuda()).cpu()).abs().max()
    result["model_max_abs_diff"] = float(diff)
    ddim = SamplerConfig("ddim", 50, "trailing")
    a = sample_checkpoint(ckpt, 16, ddim, seed=0, device="cpu")
    b = sample_checkpoint(ckpt, 16, ddim, seed=0, device="cuda")
    result["ddim50_max_abs_diff"] = float(abs(a - b).max())
    torch.set_num_threads(2)
    for batch in (64, 256):
        result[f"train_ms_per_step_cpu_b{batch}"] = round(_ms_per_step("cpu", batch, 10), 1)
        result[f"train_ms_per_step_cuda_b{batch}"] = round(_ms_per_step("cuda", batch), 2)
    ok = (
        result["auto_device"] == "cuda"
        and result["model_max_abs_diff"] < 5e-3
        and result["ddim50_max_abs_diff"] < 1e-2
    )
    result["ok"] = ok
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

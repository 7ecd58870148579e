"""The `diffusion-studio` command: the GUI with no subcommand, headless subcommands otherwise.

This module imports no Qt: the GUI is imported only when it is started. Every subcommand
drives the same core functions the GUI uses. Errors a user can cause print one line
("diffusion-studio: error: ...") and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import difflib
import re
import signal
import sys
from dataclasses import MISSING, Field, dataclass, fields, replace
from pathlib import Path
from typing import Any

from diffusion_studio.core import __version__
from diffusion_studio.core.errors import DiffusionStudioError, ExportError

PROG = "diffusion-studio"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Diffusion Studio: train small diffusion models (DDPM / DDIM) and watch them work.

With no subcommand the desktop app starts (optionally with an image or checkpoint open).
The subcommands run the same engine headless, for scripts and long runs."""

EPILOG = """\
examples:
  diffusion-studio                                  start the app
  diffusion-studio photo.png                        start the app with an image open
  diffusion-studio schedule --kind cosine --out schedule.csv
  diffusion-studio forward photo.png --gif forward.gif
  diffusion-studio train --data digits --minutes 5 --out digits.safetensors
  diffusion-studio train --data moons --objective flow --steps 3000 --out moons-flow.safetensors
  diffusion-studio sample --checkpoint digits.safetensors --gif reverse.gif --grid grid.png
  diffusion-studio samplers                         list the samplers and their options

The maths: alpha_t = 1 - beta_t, alphabar_t = prod_{s<=t} alpha_s (a product), and
x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps. Flow matching (--objective flow):
x_t = (1 - t) x_0 + t eps, t in [0, 1]; the network predicts the velocity eps - x_0."""


# `train`: previews every this many steps by default (and by time; see --preview-every)
DEFAULT_PREVIEW_EVERY = 1000
DDP_TIMEOUT_S = 600.0  # core.distributed.DEFAULT_TIMEOUT_S (not imported: torch loads late)
PREVIEW_STEPS = 50  # sampling steps of a preview (at most T)


class CliError(DiffusionStudioError):
    """A bad command-line value found after parsing."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _add_schedule_options(p: argparse.ArgumentParser, default_kind: str = "linear") -> None:
    from diffusion_studio.core.schedule import SCHEDULE_KINDS

    g = p.add_argument_group("noise schedule")
    g.add_argument(
        "--kind",
        choices=SCHEDULE_KINDS,
        default=default_kind,
        help="schedule kind (default: %(default)s)",
    )
    g.add_argument(
        "--steps",
        type=int,
        default=1000,
        metavar="T",
        help="number of timesteps T (default: %(default)s)",
    )
    g.add_argument(
        "--beta-start",
        type=float,
        default=1e-4,
        metavar="B",
        help="first beta (default: %(default)s)",
    )
    g.add_argument(
        "--beta-end", type=float, default=0.02, metavar="B", help="last beta (default: %(default)s)"
    )
    g.add_argument(
        "--zero-snr", action="store_true", help="rescale to zero terminal SNR (Lin et al. 2024)"
    )


# A sampler option's flag is --NAME (underscores as dashes); these also answer to older names.
OPTION_ALIASES = {"variance_type": "--variance"}


@dataclass(frozen=True)
class SamplerOptionFlag:
    """One flag of `sample` for a sampler option field (shared by every sampler that has a
    field of that name): flags (the first is the one messages name), the field of the first
    sampler that has it, and the names of all samplers that do."""

    name: str
    flags: tuple[str, ...]
    field: Field
    owners: tuple[str, ...]

    @property
    def dest(self) -> str:
        return f"sampler_option_{self.name}"


def sampler_option_flags() -> list[SamplerOptionFlag]:
    """The sampler option flags, generated from the registry's options dataclasses."""
    from diffusion_studio.core.samplers import REGISTRY

    found: dict[str, SamplerOptionFlag] = {}
    for spec in REGISTRY.values():
        for f in fields(spec.options_class):
            if f.name in found:
                known = found[f.name]
                found[f.name] = replace(known, owners=(*known.owners, spec.name))
                continue
            flag = "--" + f.name.replace("_", "-")
            alias = OPTION_ALIASES.get(f.name)
            flags = (alias, flag) if alias else (flag,)
            found[f.name] = SamplerOptionFlag(f.name, flags, f, (spec.name,))
    return list(found.values())


def _option_argument(option: SamplerOptionFlag) -> dict[str, Any]:
    """add_argument's keywords for a sampler option: its type, choices and range from the
    field's default and metadata, and its help."""
    meta, default = option.field.metadata, option.field.default
    text = str(meta.get("help", option.name.replace("_", " ")))
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None or high is not None:
        text += f"; in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if default is not MISSING:
        text += f"; default {default}"
    text += f" ({', '.join(option.owners)} only)"
    keywords: dict[str, Any] = {"dest": option.dest, "default": None, "help": text}
    if meta.get("choices") is None and not isinstance(default, bool):
        keywords["metavar"] = option.name.upper()
    if meta.get("choices") is not None:
        keywords["choices"] = tuple(meta["choices"])
    elif isinstance(default, bool):
        keywords["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, int):
        keywords["type"] = int
    elif isinstance(default, float) or low is not None or high is not None:
        keywords["type"] = float
    return keywords


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    """--sampler, --steps, --spacing, --karras, --clip and one flag per sampler option."""
    from diffusion_studio.core.samplers import REGISTRY, TIMESTEP_SPACINGS

    g = p.add_argument_group(
        "sampler",
        "Unset settings come from the model when it names a sampler (a diffusers scheduler "
        "config), else from: DDPM, 100 steps, trailing spacing, fixed_small, x0 clipped to "
        "[-1, 1] for image models (not for 2-D points). An option set for a sampler that lacks "
        "it is refused. `diffusion-studio samplers` lists them.",
    )
    g.add_argument(
        "--sampler",
        choices=tuple(REGISTRY),
        help="; ".join(f"{spec.name}: {spec.label}, {spec.help}" for spec in REGISTRY.values()),
    )
    g.add_argument("--steps", type=_positive_int, help="sampling steps, 1..T")
    g.add_argument("--spacing", choices=TIMESTEP_SPACINGS, help="timestep spacing")
    karras = [spec.name for spec in REGISTRY.values() if spec.karras]
    g.add_argument(
        "--karras",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Karras et al. 2022 sigma spacing "
        f"({', '.join(karras) + ' only' if karras else 'no sampler offers it yet'})",
    )
    g.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip the x0 prediction to [-1, 1]",
    )
    for option in sampler_option_flags():
        g.add_argument(*option.flags, **_option_argument(option))


def build_parser() -> argparse.ArgumentParser:
    from diffusion_studio.core.data import TOY_DATASETS
    from diffusion_studio.core.device import DEVICE_CHOICES
    from diffusion_studio.core.flow import FLOW_TIME_SAMPLINGS, OBJECTIVES
    from diffusion_studio.core.guidance import DEFAULT_GUIDANCE_SCALE
    from diffusion_studio.core.samplers import DIFFUSION_PREDICTION_TYPES
    from diffusion_studio.core.training import MODEL_SIZES

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="load every shipped resource, build a model, run a few sampling steps, exit 0 if all "
        "is well (no display needed)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # schedule
    p = sub.add_parser(
        "schedule",
        help="write a noise schedule's curves as CSV",
        description="Write beta_t, alphabar_t, sqrt(alphabar_t), sqrt(1-alphabar_t) "
        "and log-SNR for every timestep as CSV (one row per t).",
    )
    _add_schedule_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="CSV", help="output CSV file")

    # forward
    p = sub.add_parser(
        "forward",
        help="noise an image or a 2-D set step by step and save the forward process as a GIF",
        description="The forward process on IMAGE: x_t = sqrt(alphabar_t) x_0 + "
        "sqrt(1-alphabar_t) eps for evenly spaced t, with fixed noise (--path flow: flow "
        "matching's x_t = (1 - t) x_0 + t eps). IMAGE may also name a 2-D set (moons, "
        "swissroll, rings, gaussians, spiral): its points x_t drawn over the density of x_t.",
    )
    p.add_argument(
        "image", type=Path, help="an image file (PNG, JPEG, ...) or a 2-D set's name (moons, ...)"
    )
    _add_schedule_options(p)
    p.add_argument(
        "--path",
        choices=["diffusion", "flow"],
        default="diffusion",
        help="the schedule's diffusion path, or flow matching's straight path on its T "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--frames", type=_positive_int, default=40, help="frames in the GIF (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    p.add_argument(
        "--size",
        type=_positive_int,
        default=256,
        help="longest side in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--fps",
        type=_positive_float,
        default=10.0,
        help="GIF frames per second (default: %(default)s)",
    )
    p.add_argument("--gif", type=Path, help="write the forward trajectory as a GIF")
    p.add_argument("--png-dir", type=Path, help="write the frames as PNG files into this folder")

    # train
    p = sub.add_parser(
        "train",
        help="train a model and save a checkpoint",
        description="Train a diffusion model on built-in digits, a 2-D toy set or a "
        "folder of images. Saves at intervals, at the end and on Ctrl-C or SIGTERM, and "
        "writes a metrics log beside the checkpoint (CKPT.metrics.jsonl: a JSON line per step; "
        "previews in CKPT.previews/) that File > Watch Run… follows.",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help=f"digits, digits-train (the digits without the 1,000 held out for checking "
        f"models), one of {', '.join(TOY_DATASETS)}, or a folder of images",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="CKPT", help="checkpoint to write (.safetensors)"
    )
    budget = p.add_argument_group("length (the run ends at whichever comes first)")
    budget.add_argument("--steps", type=_positive_int, help="total optimizer steps")
    budget.add_argument("--minutes", type=_positive_float, help="training time budget in minutes")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue a run from its checkpoint (the budget counts from its start)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--model-size",
        choices=MODEL_SIZES,
        default="default",
        help="model preset (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="batch size; under torchrun the global batch, split evenly across the processes "
        "(default: the preset's)",
    )
    p.add_argument("--lr", type=_positive_float, help="peak learning rate (default: the preset's)")
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="diffusion (a noise schedule; --prediction) or flow (flow matching: the straight "
        "path x_t = (1 - t) x0 + t eps, the network predicts the velocity eps - x0) "
        "(default: diffusion)",
    )
    p.add_argument(
        "--prediction",
        choices=DIFFUSION_PREDICTION_TYPES,
        help="what a diffusion network predicts (not for --objective flow)",
    )
    p.add_argument(
        "--flow-time-sampling",
        choices=FLOW_TIME_SAMPLINGS,
        help="how --objective flow draws training times t: logit-normal (more at middle t) or "
        "uniform (default: logit-normal)",
    )
    p.add_argument(
        "--schedule",
        choices=["linear", "scaled_linear", "cosine", "sigmoid"],
        help="noise schedule kind",
    )
    p.add_argument(
        "--timesteps", type=_positive_int, metavar="T", help="number of diffusion timesteps T"
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=28,
        help="image size for folders (default: %(default)s)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=1,
        help="1 = grey, 3 = RGB (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="compute device (default: %(default)s)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (faster on CPUs and GPUs that support it)",
    )
    p.add_argument(
        "--save-every",
        type=_positive_int,
        metavar="N",
        help="also save every N steps (default: at least once a minute)",
    )
    p.add_argument(
        "--unconditional",
        action="store_true",
        help="ignore the data's class labels (the digits are class-conditional by default)",
    )
    p.add_argument(
        "--preview-every",
        type=int,
        default=DEFAULT_PREVIEW_EVERY,
        metavar="N",
        help="sample a preview every N steps (and at least every 30 s of training, and at the "
        "end) into the metrics log's folder; 0: no previews (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ddp = p.add_argument_group(
        "data-parallel training",
        "Started by torchrun (torchrun --nproc-per-node N $(which diffusion-studio) train ...), "
        "the processes train one model: --batch-size is the global batch, split evenly across "
        "them; rank 0 writes the checkpoint and the metrics log.",
    )
    ddp.add_argument(
        "--ddp-timeout",
        type=_positive_float,
        default=DDP_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a process waits for the others before the run fails (default: %(default)s)",
    )

    # sample
    p = sub.add_parser(
        "sample",
        help="sample from a checkpoint; save GIF, grid and/or samples",
        description="Run the reverse process from noise to samples.",
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, metavar="CKPT", help="a .safetensors checkpoint"
    )
    _add_sampler_options(p)
    p.add_argument(
        "--start-image",
        type=Path,
        metavar="IMG",
        help="start from this image noised to --start-t instead of from pure noise (image models)",
    )
    p.add_argument(
        "--start-t", type=int, metavar="T", help="the timestep --start-image is noised to"
    )
    g = p.add_argument_group(
        "class-conditional models (e.g. the digits)",
        "Which class to draw and how strongly to guide towards it (classifier-free guidance).",
    )
    g.add_argument(
        "--label",
        type=int,
        metavar="K",
        help="draw only class K (a digit); default: every class in turn",
    )
    g.add_argument(
        "--guidance",
        type=float,
        metavar="S",
        help=f"guidance scale, 1 = none (default: {DEFAULT_GUIDANCE_SCALE:g})",
    )
    p.add_argument(
        "--n", type=_positive_int, default=16, help="number of samples (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="compute device (default: %(default)s)",
    )
    p.add_argument("--gif", type=Path, help="write the reverse process as a GIF")
    p.add_argument(
        "--gif-view",
        choices=["xt", "x0", "both"],
        default="xt",
        help="GIF shows x_t, the x0 prediction, or both side by side (default: %(default)s)",
    )
    p.add_argument(
        "--frames", type=_positive_int, default=40, help="GIF frames (default: %(default)s)"
    )
    p.add_argument(
        "--fps",
        type=_positive_float,
        default=10.0,
        help="GIF frames per second (default: %(default)s)",
    )
    p.add_argument("--grid", type=Path, help="write the final samples as a PNG grid")
    p.add_argument(
        "--npy",
        type=Path,
        help="write the samples as float32 .npy, (n, C, H, W) in [-1, 1] or (n, 2)",
    )
    # samplers
    sub.add_parser(
        "samplers",
        help="list the samplers `sample --sampler` offers",
        description="The registered samplers: name, label, network evaluations per step, "
        "whether the same noise gives the same samples, Karras sigma spacing, default steps, "
        "their options (flags of `sample`) and what each is for.",
    )
    # export
    p = sub.add_parser(
        "export",
        help="write a checkpoint for sampling only (smaller: no training state)",
        description="Copy a checkpoint without its training state (raw weights, optimizer, "
        "RNG), optionally with float16 weights: the file to share or ship.",
    )
    p.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint")
    p.add_argument("--out", required=True, type=Path, metavar="CKPT", help="the file to write")
    p.add_argument("--half", action="store_true", help="store the weights as float16")
    # inspect
    p = sub.add_parser(
        "inspect",
        help="what a model sees and gets wrong at a timestep t, on one image",
        description="Noise IMAGE (resized to the model) to timestep t with seeded noise and "
        "show the model's view: x_t, the true and the predicted noise, the predicted x0 and "
        "the x0 error. Prints the training loss in the model's own parametrisation and the "
        "x0 / noise mean squared errors at t; --csv writes them for every t.",
    )
    p.add_argument("image", type=Path, help="an image file (PNG, JPEG, ...)")
    p.add_argument(
        "--checkpoint", required=True, type=Path, metavar="CKPT", help="an image model's checkpoint"
    )
    p.add_argument("--t", type=int, metavar="T", help="the timestep, 0..T-1 (default: T // 2)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    p.add_argument(
        "--label",
        type=int,
        metavar="K",
        help="class K for a class-conditional model (default: no label)",
    )
    p.add_argument("--png", type=Path, metavar="OUT.png", help="write the row of panels at t")
    p.add_argument(
        "--csv",
        type=Path,
        metavar="OUT.csv",
        help="write t, log_snr, loss, x0_mse, eps_mse for every t = 0..T-1",
    )
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="cpu",
        help="compute device (default: %(default)s)",
    )
    return parser


# ----------------------------------------------------------------------------- commands


def _schedule_from_args(args: argparse.Namespace):
    from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

    return NoiseSchedule(
        ScheduleConfig(args.kind, args.steps, args.beta_start, args.beta_end, args.zero_snr)
    )


def cmd_schedule(args: argparse.Namespace) -> int:
    from diffusion_studio.core.schedule_table import save_schedule_csv

    schedule = _schedule_from_args(args)
    path = save_schedule_csv(args.out, [schedule])
    print(f"wrote {schedule.num_timesteps} rows to {path}")
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    from diffusion_studio.core.data import TOY_DATASETS, load_image
    from diffusion_studio.core.export import save_gif, save_png_frames
    from diffusion_studio.core.flow import FlowPath
    from diffusion_studio.core.forward import ForwardProcess, step_caption
    from diffusion_studio.core.forward_points import ForwardPoints

    if args.gif is None and args.png_dir is None:
        raise CliError("nothing to write: give --gif FILE and/or --png-dir FOLDER")
    schedule = _schedule_from_args(args)
    path = FlowPath(schedule.num_timesteps) if args.path == "flow" else schedule
    name = str(args.image)
    if name in TOY_DATASETS and not args.image.exists():  # a 2-D set: points over the density
        steps, frames = ForwardPoints(path, name, seed=args.seed).frames(args.frames, args.size)
    else:
        image = load_image(args.image, max_side=args.size)
        steps, frames = ForwardProcess(path, image, seed=args.seed).frames(args.frames)
    if args.gif is not None:
        count = save_gif(
            args.gif,
            frames,
            fps=args.fps,
            scale=max(1, 256 // max(frames[0].shape[:2])),
            captions=[step_caption(path, int(step)) for step in steps],
        )
        first, last = step_caption(path, int(steps[0])), step_caption(path, int(steps[-1]))
        print(f"wrote {args.gif} ({count} frames, {first} .. {last})")
    if args.png_dir is not None:
        paths = save_png_frames(args.png_dir, frames, prefix="forward")
        print(f"wrote {len(paths)} PNG frames to {args.png_dir}")
    return 0


def _train_config(args: argparse.Namespace):
    from diffusion_studio.core.checkpoint import load_checkpoint
    from diffusion_studio.core.schedule import ScheduleConfig
    from diffusion_studio.core.training import preset_config, resume_config

    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        if args.objective is not None and args.objective != ckpt.objective:
            raise CliError(
                f"--objective {args.objective} does not match the run being resumed "
                f"({ckpt.objective})"
            )
        _check_objective_flags(args, ckpt.objective)
        overrides: dict[str, Any] = {"device": args.device}
        if args.steps is not None or args.minutes is not None:
            overrides["max_steps"] = args.steps
            overrides["max_minutes"] = args.minutes
        config = resume_config(ckpt, **overrides)
        return replace(config, **_preview_settings(args, config.schedule.num_timesteps)), ckpt
    if args.steps is None and args.minutes is None:
        raise CliError("give a length: --steps N and/or --minutes M")
    _check_objective_flags(args, args.objective or preset_config(args.data).objective)
    overrides = {
        "max_steps": args.steps,
        "max_minutes": args.minutes,
        "seed": args.seed,
        "device": args.device,
        "image_size": args.image_size,
        "channels": args.channels,
    }
    if args.bf16:
        overrides["bf16"] = True
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    if args.prediction is not None:
        overrides["prediction_type"] = args.prediction
    if args.objective is not None:
        overrides["objective"] = args.objective
    if args.flow_time_sampling is not None:
        overrides["flow_time_sampling"] = args.flow_time_sampling
    if args.unconditional:
        overrides["class_conditional"] = False
    config = preset_config(args.data, args.model_size, **overrides)
    if args.schedule is not None or args.timesteps is not None:
        base = config.schedule
        schedule = ScheduleConfig(
            args.schedule or base.kind,
            args.timesteps or base.num_timesteps,
            base.beta_start,
            base.beta_end,
        )
        config = replace(config, schedule=schedule)
    return replace(config, **_preview_settings(args, config.schedule.num_timesteps)), None


def _check_objective_flags(args: argparse.Namespace, objective: str) -> None:
    """--prediction is diffusion's, --flow-time-sampling flow's: refuse either with the other
    objective (one line). objective: --objective, else the resumed run's or the preset's."""
    if objective == "flow" and args.prediction is not None:
        if args.objective is None:  # the preset's or the resumed run's choice, not the user's
            raise CliError(
                "--prediction applies to diffusion only, and this run trains flow matching "
                "(whose model predicts the velocity eps - x0): add --objective diffusion"
            )
        raise CliError(
            "--prediction applies to --objective diffusion only: a flow model predicts the "
            "velocity eps - x0"
        )
    if objective != "flow" and args.flow_time_sampling is not None:
        raise CliError("--flow-time-sampling applies to --objective flow only")


def _preview_settings(args: argparse.Namespace, num_timesteps: int) -> dict[str, Any]:
    """The TrainConfig fields of --preview-every (CliError for a negative N)."""
    if args.preview_every < 0:
        raise CliError(f"--preview-every must be >= 0 (0: no previews), got {args.preview_every}")
    return {
        "preview_every": args.preview_every,
        "preview_steps": min(PREVIEW_STEPS, num_timesteps),
    }


SKIPPED_SHOWN = 5  # files named in the "skipped" line; the rest are counted


def skipped_summary(skipped: tuple[str, ...] | list[str], loaded: int) -> str:
    """One line about the files of a data folder that were skipped ("path: reason" lines, as
    core's Dataset.skipped holds them): 'skipped 2 of 7 files: a.png (an empty file), ...',
    naming at most SKIPPED_SHOWN files, then 'and N more'."""
    shown = []
    for line in skipped[:SKIPPED_SHOWN]:
        path, _, reason = line.partition(": ")
        reason = reason.replace(f"'{path}'", "").replace(path, "").strip()
        reason = re.split(r" \(|\. |\.$|: ", reason, maxsplit=1)[0].strip()
        reason = re.sub(r"^(image\s+)?(is\s+)?", "", reason)
        name = Path(path).name or path
        shown.append(f"{name} ({reason})" if reason else name)
    more = len(skipped) - len(shown)
    total = loaded + len(skipped)
    text = f"skipped {len(skipped)} of {total} files: {', '.join(shown)}"
    return text + (f", and {more} more" if more > 0 else "")


class _StopSignals:
    """SIGINT and SIGTERM ask a training run to stop at its next step (`control.cancel()`)
    instead of raising where they land: the step finishes, the ranks of a data-parallel run
    agree to stop, rank 0 saves once (torchrun sends a Ctrl-C on to every process, so one
    process may get two signals). `received` names the first; `restore()` puts the old
    handlers back."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.received: str | None = None
        self._old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._old:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        self.control.cancel()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def cmd_train(args: argparse.Namespace) -> int:
    """`train`, one process or one rank of a torchrun run. Rank 0 prints the errors every rank
    meets alike (settings, a non-finite loss, a peer that failed); another rank prints only
    its own failures (naming its rank), and exits 2 without a message otherwise."""
    from diffusion_studio.core.distributed import DistributedError, torchrun_environment
    from diffusion_studio.core.errors import ConfigError, TrainingError

    env = torchrun_environment()
    if env is None or env.rank == 0:
        return _train(args, env)
    try:
        return _train(args, env)
    except (CliError, ConfigError, TrainingError, DistributedError):
        return EXIT_USER_ERROR  # rank 0 says it
    except DiffusionStudioError as exc:
        print(f"{PROG}: error: rank {env.rank}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _train(args: argparse.Namespace, env: Any) -> int:
    from diffusion_studio.core.distributed import check_batch_split, init_distributed

    out = args.out
    same_as_resume = args.resume is not None and out.resolve() == args.resume.resolve()
    if out.exists() and not (args.overwrite or same_as_resume):
        raise CliError(
            f"'{out}' already exists: pass --overwrite to replace it, or choose another --out"
        )
    if out.suffix.lower() != ".safetensors":
        raise CliError(f"--out must end in .safetensors, got '{out.name}'")
    config, ckpt = _train_config(args)
    if env is None:
        return _train_run(args, config, ckpt, None)
    check_batch_split(config.batch_size, env.world_size)  # before the processes meet
    context = init_distributed(config.device, args.ddp_timeout)
    try:
        return _train_run(args, config, ckpt, context)
    finally:
        context.close()


def _train_run(args: argparse.Namespace, config: Any, ckpt: Any, context: Any) -> int:
    """Train `config` (resuming `ckpt`) with the save policy and the metrics log; `context`:
    this process's DistributedContext under torchrun, else None."""
    from diffusion_studio.app.progress import ProgressBar, format_seconds
    from diffusion_studio.core.distributed import DistributedError
    from diffusion_studio.core.errors import CheckpointError, TrainingError
    from diffusion_studio.core.training import Trainer, TrainProgress
    from diffusion_studio.core.training_session import (
        DEFAULT_AUTOSAVE_S,
        AutosavePolicy,
        RunRecorder,
        RunSaver,
    )

    out = args.out
    trainer = Trainer(config, resume=ckpt, distributed=context)
    main_rank = trainer.is_main
    if main_rank:
        processes = f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""
        print(
            f"training on {trainer.dataset.name} ({len(trainer.dataset)} {trainer.dataset.kind}) "
            f"on {trainer.device}{processes}, {config.model.kind} model, "
            f"{trainer.prediction_type} prediction, "
            f"{config.schedule.kind} schedule T={config.schedule.num_timesteps}",
            file=sys.stderr,
        )
        if trainer.dataset.skipped:
            print(skipped_summary(trainer.dataset.skipped, len(trainer.dataset)), file=sys.stderr)
    policy = (
        AutosavePolicy(every_steps=args.save_every)
        if args.save_every
        else AutosavePolicy(every_s=DEFAULT_AUTOSAVE_S)
    )
    saver = RunSaver(trainer, out, policy) if main_rank else None
    recorder = RunRecorder(trainer, out, fresh=ckpt is None) if main_rank else None
    if recorder is not None and recorder.error is not None:
        print(f"{PROG}: warning: {recorder.error} (training continues)", file=sys.stderr)
    bar = ProgressBar("train")
    signals = _StopSignals(trainer.control)
    status, message = "failed", ""
    together = False  # the ranks ended at the same point: they can meet once more
    try:
        for record in trainer.run():
            if recorder is None or saver is None:
                continue  # another rank: rank 0 reports, logs and saves
            warning = recorder.record(record)
            if warning is not None:
                print(f"\n{PROG}: warning: {warning} (training continues)", file=sys.stderr)
            if not isinstance(record, TrainProgress):
                continue
            bar.update(
                record.fraction_done,
                f"step {record.step}/{record.total_steps or '?'} loss {record.loss:.4f} "
                f"{record.samples_per_s:.0f} samples/s"
                f"{record.threads.note() if record.threads else ''} "
                f"ETA {format_seconds(record.eta_s)}",
            )
            saved = saver.autosave()
            if saved is not None and saved.error is not None:
                print(f"\n{PROG}: warning: {saved.error} (training continues)", file=sys.stderr)
            elif saved is not None:
                bar.update(
                    trainer.fraction_done(), f"saved (interval) at step {saved.step}", force=True
                )
        bar.close()
        together = True
        if signals.received is not None or not trainer.is_done:
            # a signal here, or (data-parallel) one that reached another process
            cause = signals.received or "a signal to another process"
            status, message = "stopped", f"{cause} at step {trainer.step}"
            return _end_interrupted(saver, out)
        status = "finished"
        if saver is None:
            return 0
        saved = saver.save_run()
        if saved.error is not None:
            status, message = "failed", saved.error
            raise CheckpointError(saved.error)
        if saved.path is None:
            raise CliError("the run ended before its first step: nothing to save")
        print(f"wrote {out} (step {trainer.step}, {format_seconds(trainer.elapsed_s)} of training)")
        return 0
    except TrainingError as exc:
        bar.close()
        together = True  # every rank met the same loss and gradients
        message = str(exc)
        if saver is not None:
            saved = saver.save_run()
            if saved.path is not None:
                print(f"{PROG}: saved the last good step ({saved.step}) to {out}", file=sys.stderr)
            elif saved.error is not None:
                print(
                    f"{PROG}: the last good step ({saved.step}) was not saved: {saved.error}",
                    file=sys.stderr,
                )
        raise
    except DistributedError as exc:
        # a peer died or hung: rank 0 saves its last good step (core.training keeps it whole)
        bar.close()
        message = str(exc)
        if saver is not None:
            saved = saver.save_run()
            if saved.path is not None:
                message += f"; saved the last good step ({saved.step}) to {out}"
            elif saved.error is not None:
                message += f"; the last good step ({saved.step}) was not saved: {saved.error}"
            else:
                message += "; nothing to save before the first step"
        raise DistributedError(message) from exc
    except BaseException as exc:
        bar.close()
        message = message or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            if recorder is not None:
                recorder.end(status, message)
            if context is not None and together:
                context.barrier()  # the other ranks wait until rank 0 has saved and logged
        finally:
            signals.restore()


def _end_interrupted(saver: Any, out: Path) -> int:
    """Save a run stopped by a signal (rank 0; `saver` None elsewhere) and say so."""
    from diffusion_studio.core.errors import CheckpointError

    if saver is None:
        return EXIT_INTERRUPTED
    saved = saver.save_run()
    if saved.error is not None:
        raise CheckpointError(saved.error)
    if saved.path is None:
        print("interrupted before the first step: nothing to save", file=sys.stderr)
    else:
        print(f"interrupted: saved step {saved.step} to {out}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _sampler_config(args: argparse.Namespace, ckpt: Any):
    """Settings given on the command line, else the model's own sampler (when the chosen
    sampler is the model's), else the chosen sampler's defaults (`sampler_defaults`: its step
    count and Karras choice, with the model's clip). CliError for an option or --karras the
    chosen sampler lacks, or a sampler of the other objective (a diffusion sampler for a flow
    model, or the reverse)."""
    from diffusion_studio.core.samplers import (
        REGISTRY,
        SamplerConfig,
        check_sampler_objective,
        sampler_defaults,
    )
    from diffusion_studio.core.sampling import checkpoint_sampler_config

    defaults = checkpoint_sampler_config(ckpt)
    kind = args.sampler or defaults.kind
    check_sampler_objective(REGISTRY[kind], ckpt.objective)
    if kind != defaults.kind:
        defaults = sampler_defaults(kind, defaults.clip_sample)
    spec = REGISTRY[kind]
    own = {f.name for f in fields(spec.options_class)}
    options = dict(defaults.options) if kind == defaults.kind else {}
    for option in sampler_option_flags():
        value = getattr(args, option.dest)
        if value is None:
            continue
        if option.name not in own:
            raise CliError(
                f"{option.flags[0]} applies to {', '.join(option.owners)} only "
                f"(the sampler here is {kind})"
            )
        options[option.name] = value
    if args.karras and not spec.karras:
        offered = [s.name for s in REGISTRY.values() if s.karras]
        where = f"{', '.join(offered)} only" if offered else "no sampler yet"
        raise CliError(f"--karras applies to {where} (the sampler here is {kind})")
    karras = defaults.karras if args.karras is None else args.karras
    return SamplerConfig(
        kind=kind,
        num_inference_steps=args.steps or defaults.num_inference_steps,
        spacing=args.spacing or defaults.spacing,
        clip_sample=defaults.clip_sample if args.clip is None else args.clip,
        clip_range=defaults.clip_range,
        karras=karras and spec.karras,
        options=options,
    )


def cmd_samplers(args: argparse.Namespace) -> int:
    """Print the sampler registry as a table."""
    from diffusion_studio.core.samplers import REGISTRY

    flags = sampler_option_flags()
    header = (
        "name",
        "label",
        "objective",
        "evals/step",
        "deterministic",
        "karras",
        "steps",
        "options",
    )
    rows = [header]
    for spec in REGISTRY.values():
        names = {f.name for f in fields(spec.options_class)}
        options = " ".join(o.flags[0] for o in flags if o.name in names)
        rows.append(
            (
                spec.name,
                spec.label,
                spec.objective,
                str(spec.evaluations_per_step),
                "yes" if spec.deterministic else "no",
                "yes" if spec.karras else "no",
                str(spec.default_steps),
                options or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row, spec in zip(rows, [None, *REGISTRY.values()]):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
        print(f"{line}  {spec.help if spec else 'help'}".rstrip())
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from diffusion_studio.app.progress import ProgressBar
    from diffusion_studio.core.checkpoint import load_checkpoint
    from diffusion_studio.core.device import resolve_device
    from diffusion_studio.core.export import (
        make_grid,
        reverse_pictures,
        save_gif,
        save_png,
        select_frame_indices,
        to_uint8_images,
        upscale_nearest,
    )
    from diffusion_studio.core.flow import forward_path
    from diffusion_studio.core.guidance import DEFAULT_GUIDANCE_SCALE, num_classes
    from diffusion_studio.core.sampling import SampleRequest, Trajectory, prepare_sampling

    if args.gif is None and args.grid is None and args.npy is None:
        raise CliError("nothing to write: give --gif, --grid and/or --npy")
    if (args.start_image is None) != (args.start_t is None):
        raise CliError("--start-image and --start-t go together: give both or neither")
    ckpt = load_checkpoint(args.checkpoint)
    if args.grid is not None and ckpt.is_points:
        raise CliError(
            "--grid needs an image model; this checkpoint is a 2-D point model (use --gif or --npy)"
        )
    request = SampleRequest(
        sampler=_sampler_config(args, ckpt),
        num_samples=args.n,
        seed=args.seed,
        start_image=args.start_image,
        start_t=args.start_t,
        label=args.label,
        guidance_scale=DEFAULT_GUIDANCE_SCALE if args.guidance is None else args.guidance,
    )
    run = prepare_sampling(ckpt, request, resolve_device(args.device))
    if args.guidance is not None and not num_classes(run.model):
        raise CliError("--guidance needs a class-conditional model; this one is unconditional")
    print(f"sampling with {request.sampler.summary()}", file=sys.stderr)
    trajectory = Trajectory(max_frames=max(2, min(1000, args.frames * 4)) if args.gif else 2)
    bar = ProgressBar("sample")
    n_steps = run.num_steps
    for frame in run.frames:
        trajectory.append(frame)
        bar.update(frame.step / n_steps, f"step {frame.step}/{n_steps}")
    bar.update(1.0, f"step {n_steps}/{n_steps}", force=True)
    bar.close()
    samples = trajectory.final_samples
    assert samples is not None
    if args.npy is not None:
        try:
            np.save(args.npy, samples.astype(np.float32))
        except OSError as exc:
            raise ExportError(f"cannot write '{args.npy}': {exc.strerror or exc}") from exc
        print(f"wrote {args.npy} {samples.shape}")
    if args.grid is not None:
        grid = make_grid(to_uint8_images(samples))
        save_png(args.grid, upscale_nearest(grid, max(1, 256 // max(grid.shape[:2]))))
        print(f"wrote {args.grid}")
    if args.gif is not None:
        indices = select_frame_indices(len(trajectory), min(args.frames, len(trajectory)))
        path = forward_path(ckpt.objective, ckpt.schedule_config)  # flow frames: t in [0, 1]
        frames, captions = reverse_pictures(trajectory, indices, args.gif_view, path=path)
        scale = max(1, 256 // max(frames[0].shape[:2]))
        count = save_gif(
            args.gif, frames, fps=args.fps, scale=scale, hold_last_s=1.5, captions=captions
        )
        print(f"wrote {args.gif} ({count} frames)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from diffusion_studio.core.checkpoint import for_sampling, load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    path = save_checkpoint(args.out, for_sampling(ckpt, half=args.half))
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB, for sampling only)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from diffusion_studio.app.progress import ProgressBar
    from diffusion_studio.core.checkpoint import load_checkpoint
    from diffusion_studio.core.device import resolve_device
    from diffusion_studio.core.inspect import (
        collect_curve,
        inspect_at,
        inspect_image,
        iter_curve,
        save_curve_csv,
        setup_from_checkpoint,
    )
    from diffusion_studio.core.inspect_render import save_row_png

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.is_points:
        raise CliError("inspect needs an image model; this checkpoint is a 2-D point model")
    steps = ckpt.schedule_config.num_timesteps
    t = steps // 2 if args.t is None else args.t
    if not 0 <= t < steps:
        raise CliError(f"--t {t} is out of range: this model's timesteps are 0..{steps - 1}")
    image = inspect_image(ckpt, args.image)
    setup = setup_from_checkpoint(
        ckpt, image, seed=args.seed, label=args.label, device=resolve_device(args.device)
    )
    record = inspect_at(setup, t)
    print(
        f"t = {t}: log_snr {record.log_snr:.4g}, loss ({record.prediction_type}) "
        f"{record.loss:.6g}, x0_mse {record.x0_mse:.6g}, eps_mse {record.eps_mse:.6g}"
    )
    if args.png is not None:
        save_row_png(args.png, record)
        print(f"wrote {args.png}")
    if args.csv is not None:
        bar = ProgressBar("inspect")
        batches = []
        for batch in iter_curve(setup):
            batches.append(batch)
            bar.update(batch.done / batch.total, f"t {batch.done}/{batch.total}")
        bar.update(1.0, f"t {steps}/{steps}", force=True)
        bar.close()
        save_curve_csv(args.csv, collect_curve(setup, batches))
        print(f"wrote {args.csv} ({steps} rows)")
    return 0


COMMANDS = {
    "schedule": cmd_schedule,
    "forward": cmd_forward,
    "train": cmd_train,
    "sample": cmd_sample,
    "samplers": cmd_samplers,
    "export": cmd_export,
    "inspect": cmd_inspect,
}


def _display_available() -> bool:
    """False on Linux without X11/Wayland (Qt would abort); True elsewhere or when a Qt
    platform is chosen explicitly (e.g. QT_QPA_PLATFORM=offscreen)."""
    import os

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def gui_arguments_error(args: list[str]) -> str | None:
    """Why `args` (the app's arguments when no subcommand is given: files and folders to
    open) cannot start the app, or None. A first word near a command's name is taken for a
    mistyped command ("did you mean"); anything else must be a file or folder that exists."""
    for position, arg in enumerate(args):
        if Path(arg).expanduser().exists():
            continue
        if arg.startswith("-"):
            return f"unknown option '{arg}' (the app takes files to open; see --help)"
        if position == 0:
            near = difflib.get_close_matches(arg, list(COMMANDS), n=1)
            if near:
                return f"unknown command '{arg}' (did you mean '{near[0]}'?)"
            if not any(c in arg for c in "./\\"):  # a bare word: a command, not a file name
                return (
                    f"unknown command '{arg}' (commands: {', '.join(COMMANDS)}), "
                    "and no file or folder of that name"
                )
        return f"no such file or folder: '{arg}'"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # No subcommand: the GUI, optionally with files to open.
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")):
        problem = gui_arguments_error(argv)
        if problem is not None:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
            return EXIT_USER_ERROR
        if not _display_available():
            print(
                f"{PROG}: error: no display found (DISPLAY and WAYLAND_DISPLAY are unset): start "
                "the app on a desktop, or use a subcommand (see --help)",
                file=sys.stderr,
            )
            return EXIT_USER_ERROR
        from diffusion_studio.app.gui_env import prepare_gui_threading

        prepare_gui_threading()  # before torch is imported (by the window's engine loader)
        from diffusion_studio.app.main_window import run_app

        return run_app(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_check:
        from diffusion_studio.app.self_check import run_self_check

        return run_self_check()
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except DiffusionStudioError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return 1


if __name__ == "__main__":
    sys.exit(main())

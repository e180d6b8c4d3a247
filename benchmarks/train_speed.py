"""Training throughput under torchrun: samples/s with 1, 2, ... processes, and the scaling
efficiency between them.

Each configuration ``PxT`` is P processes of T threads each, launched with
``torch.distributed.run`` exactly as a user would (DistributedDataParallel: gloo on CPU,
NCCL on GPU), training one stage of the chosen preset with the same global batch. The
first ``--warmup`` steps (and any compiling) are not timed; the last step is not timed
either (it writes a checkpoint). A sample is one segment of the global batch (one frame for
the autoencoder, ``segment_length`` latent frames for the dynamics).

Scaling efficiency of ``PxT`` = its samples/s over P times the samples/s of ``1xT``: 1.0
when P processes, each on its own cores, train P times as fast as one. On CPU the
comparison that answers "do I use my cores better with more processes?" is ``2x1`` against
``1x2`` (same cores), reported as ``speedup_over``.

    python -m benchmarks.train_speed --data data/takecover-skip4            # 1x1 1x2 2x1 on CPU
    python -m benchmarks.train_speed --data DIR --autoencoder-from RUN     # RUN's autoencoder
    python -m benchmarks.train_speed --data DIR --device cuda --configs 1x8 --batch-size 256

Without ``--autoencoder-from``, the dynamics stage trains on latents of a freshly initialised
autoencoder: the same shapes and so the same speed as a trained one (speed only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError


def parse_config(text: str) -> tuple[int, int]:
    """``"PxT"`` (or ``"P"``: threads from the cores) -> (processes, threads per process)."""
    processes, _, threads = text.partition("x")
    try:
        count = int(processes)
        per = int(threads) if threads else max(1, (os.cpu_count() or 1) // count)
    except ValueError:
        raise ConfigError(f"configuration {text!r}: write PROCESSESxTHREADS, e.g. 2x1") from None
    if count < 1 or per < 1:
        raise ConfigError(f"configuration {text!r}: processes and threads must be >= 1")
    return count, per


def launch(args: argparse.Namespace, processes: int, threads: int, result: Path) -> dict[str, Any]:
    """Run one configuration under torchrun; returns what rank 0 measured."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "benchmarks.train_speed", "--worker",
               "--result", str(result), "--data", args.data, "--preset", args.preset,
               "--stage", args.stage, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", args.device, "--workers", str(args.workers),
               "--episodes", str(args.episodes)]
    for flag in ("autoencoder_from", "batch_size", "precision"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    if args.compile:
        command.append("--compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{processes}x{threads} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(result.read_text())  # type: ignore[no-any-return]


def worker(args: argparse.Namespace) -> int:
    """One process of a configuration: train ``warmup + steps + 1`` steps, time the middle."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from benchmarks.speed import synchronize
    from worldsim.config import preset
    from worldsim.data import EpisodeDataset
    from worldsim.train import (
        autoencoder_stage,
        dynamics_stage,
        encode_dataset,
        load_finished_autoencoder,
        run_stage,
        setup_distributed,
    )
    from worldsim.utils import seed_everything
    from worldsim.world_model import WorldModel, WorldModelInfo

    proc = setup_distributed(args.device)
    seed_everything(0, proc.rank)
    dataset = EpisodeDataset(args.data)
    config = preset(args.preset, num_actions=dataset.num_actions)
    train_set, _ = dataset.split(config.holdout_fraction)
    train_set = train_set.subset(range(min(args.episodes, len(train_set))))
    model = WorldModel(config, WorldModelInfo(env=dataset.env, frame_size=dataset.frame_size))
    model.to(proc.device)
    cfg = getattr(config, f"{args.stage}_training")
    cfg.steps = args.warmup + args.steps + 1
    cfg.checkpoint_every = cfg.steps  # one save, after the timed steps
    cfg.media_every, cfg.log_every = 0, cfg.steps
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.precision:
        cfg.precision = args.precision
    scratch = Path(tempfile.mkdtemp(prefix=f"train-speed-{proc.rank}-"))
    if args.stage == "autoencoder":
        stage = autoencoder_stage(model, train_set, cfg, seed=0)
    else:
        cache = scratch / "latents.safetensors"
        if args.autoencoder_from:
            run = Path(args.autoencoder_from)
            load_finished_autoencoder(model, run)
            if (run / "latents" / "train.safetensors").is_file():
                cache = run / "latents" / "train.safetensors"
        latents = encode_dataset(model, train_set, cache, progress=False,
                                 precision=cfg.precision)
        stage = dynamics_stage(model, train_set, latents, cfg, seed=0)
    times: dict[int, float] = {}

    def clock(done: int) -> None:
        synchronize(proc.device)
        times[done] = time.perf_counter()

    writer = SummaryWriter(str(scratch / "tb")) if proc.is_main else None
    figures = run_stage(stage, scratch / args.stage, proc, 0, writer, progress=False,
                        workers=args.workers, compile=args.compile, on_step=clock)
    if writer is not None:
        writer.close()
    shutil.rmtree(scratch, ignore_errors=True)
    seconds = times[args.warmup + args.steps] - times[args.warmup]
    if proc.is_main:
        Path(args.result).write_text(json.dumps({
            "samples_per_s": args.steps * cfg.batch_size / seconds,
            "seconds_per_step": seconds / args.steps, "global_batch": cfg.batch_size,
            "segment_length": cfg.segment_length, "precision": cfg.precision,
            "device": str(proc.device), "world_size": proc.world_size,
            "torch_threads": torch.get_num_threads(),
            "flops_per_step": figures["flops_per_step"],
            "peak_memory_gib_rank0": figures["peak_memory_gib"],
        }))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder from `worldsim collect`")
    parser.add_argument("--autoencoder-from", default=None, metavar="RUN",
                        help="a `worldsim train` run whose finished autoencoder (and latent "
                             "cache) the dynamics stage uses (default: a fresh autoencoder)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"],
                        help="model and stage settings (default: small)")
    parser.add_argument("--stage", default="dynamics", choices=["autoencoder", "dynamics"],
                        help="which stage to time (default: dynamics, the long one)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="PROCESSESxTHREADS configurations, e.g. 1x1 1x2 2x1 (default: "
                             "1x1, 1xC and 2x(C/2) for C cores on CPU; 1 and the GPU count on "
                             "CUDA)")
    parser.add_argument("--episodes", type=int, default=100,
                        help="training episodes to draw segments from: speed does not depend "
                             "on it, encoding time does (default: 100)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps first (default: 5; use ~20 with --compile)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (default: the preset's); must split evenly")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="training precision (default: the preset's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data-loading worker processes per process (default: 0)")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile")
    parser.add_argument("--out", default=None,
                        help="results folder (default: benchmarks/results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if min(args.steps, args.warmup, args.episodes) < 1:
        parser.error("--steps, --warmup and --episodes must be at least 1")
    if not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such dataset folder; record one with "
                     "`worldsim collect`")

    from benchmarks.common import write_result

    cores = os.cpu_count() or 1
    if args.device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()  # one process per GPU (NCCL)
        default = ["1"] + ([str(gpus)] if gpus > 1 else [])
    else:
        default = sorted({"1x1", f"1x{cores}", f"2x{max(1, cores // 2)}"})
    configs = [parse_config(text) for text in args.configs or default]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for processes, threads in configs:
            name = f"{processes}x{threads}"
            rows[name] = launch(args, processes, threads, Path(folder) / f"{name}.json")
            print(f"{name}: {rows[name]['samples_per_s']:8.1f} samples/s "
                  f"({rows[name]['seconds_per_step']:.3f} s per step of "
                  f"{rows[name]['global_batch']})", flush=True)
    for name, row in rows.items():
        processes, threads = parse_config(name)
        single = rows.get(f"1x{threads}")
        if processes > 1 and single:
            row["scaling_efficiency"] = row["samples_per_s"] / (processes * single["samples_per_s"])
            print(f"{name}: scaling efficiency {row['scaling_efficiency']:.2f} "
                  f"(vs {processes} x 1x{threads})")
        same_cores = rows.get(f"1x{processes * threads}")
        if processes > 1 and same_cores:
            row["speedup_over"] = {f"1x{processes * threads}":
                                   row["samples_per_s"] / same_cores["samples_per_s"]}
    path = write_result(f"train-speed-{args.device.split(':')[0]}", {
        "data": args.data, "autoencoder_from": args.autoencoder_from, "preset": args.preset,
        "stage": args.stage, "steps": args.steps, "warmup": args.warmup, "compiled": args.compile,
        "workers": args.workers, "configs": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

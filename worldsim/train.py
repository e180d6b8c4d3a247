"""Training the world model: the compression network, then the dynamics model.

Written for ``torchrun`` from the start: one process is a world of size 1. Every random
draw of step ``s`` (which segments, which noise) is a function of (seed, s, batch row), and
each process computes its own rows of the global batch, so

- a run resumed from a checkpoint continues exactly as an uninterrupted one, whatever
  the number of processes before and after;
- N processes with DistributedDataParallel reach the weights one process reaches with the
  same global batch (gradients are averaged over equal shares of the batch).

Run layout (``--out RUN``)::

    RUN/world_model/model.safetensors  the finished model (+ config.json)
    RUN/autoencoder/                   stage checkpoint (resumable) and final weights
    RUN/dynamics/                      stage checkpoint (resumable) and final weights
    RUN/latents/                       the dataset encoded by the finished autoencoder
    RUN/tb/                            TensorBoard logs
    RUN/train.json                     wall time, hardware, figures of each stage
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from worldsim.config import StageConfig, WorldModelConfig, preset
from worldsim.data import Batch, EpisodeDataset, SegmentSampler, dataset_stats
from worldsim.diffusion.edm import EDMSampler
from worldsim.errors import ConfigError, WorldsimError
from worldsim.metrics import psnr
from worldsim.utils import atomic_path, get_device, machine_info, seed_everything, write_json_atomic
from worldsim.world_model import WorldModel, WorldModelInfo

STAGES = ("autoencoder", "dynamics")


class TrainingDiverged(WorldsimError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---- processes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a (possibly single-process) run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's contiguous share of a global batch."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"global batch {batch_size} does not split evenly over {self.world_size} "
                "processes; use a batch size divisible by the process count"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the torchrun process group if there is one (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = get_device(device)
    if world_size == 1:
        return Distributed(0, 1, resolved)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if resolved.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local_rank} of this machine has no GPU of its own: "
                f"{torch.cuda.device_count()} visible, and NCCL needs one GPU per process; "
                "start torchrun with --nproc_per_node at most the GPU count")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), resolved)


def check_same_start(proc: Distributed, step: int, folder: Path) -> None:
    """Every process must resume from the same checkpoint step; with machines that do not
    share ``--out`` (only rank 0 writes checkpoints) they would not, and silently diverge."""
    if proc.world_size == 1:
        return
    steps = torch.tensor([step, -step], dtype=torch.long, device=proc.device)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    if int(steps[0]) != -int(steps[1]):
        raise ConfigError(
            f"processes found different checkpoints in {folder} (steps {-int(steps[1])} to "
            f"{int(steps[0])}): rank 0 writes the checkpoints, so every machine must see the "
            "same --out folder; put it on a shared filesystem (or copy it to every machine) "
            "and re-run")


def barrier(proc: Distributed) -> None:
    if proc.world_size > 1:
        dist.barrier()


# ---- small helpers ---------------------------------------------------------------------------
def learning_rate(cfg: StageConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``lr_final_fraction * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr_final_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay used after optimiser step ``step`` (0-based): ``decay``, warmed up as
    ``(1 + step) / (10 + step)`` while that is smaller. Without the warm-up the average
    keeps ``decay ** steps`` of the initial weights (22 % after 1,500 steps at 0.999: the
    zero-initialised output layer then shrinks every prediction towards the mean frame)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: dict[str, Tensor], model: nn.Module, decay: float) -> None:
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
        else:
            ema[name].copy_(value)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The random stream of one training step (identical in every process)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([seed, step, 0xD1FF]).generate_state(1)[0]))
    return generator


def precision_context(precision: str, device: torch.device) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, enabled=False)


# ---- checkpoints of a stage ------------------------------------------------------------------
def save_stage_checkpoint(folder: Path, step: int, module: nn.Module,
                          ema: dict[str, Tensor] | None, optimizer: torch.optim.Optimizer,
                          extra: dict[str, Any]) -> None:
    """Weights (+EMA) as safetensors, optimiser state as a weights-only torch file, then a
    JSON marker naming the step; the marker is written last, so a kill mid-save leaves the
    previous checkpoint valid."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()})
    with atomic_path(folder / f"weights-{step}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / f"optimizer-{step}.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)
    write_json_atomic(folder / "checkpoint.json", {"step": step, **extra})
    for old in folder.glob("weights-*.safetensors"):
        if old.name != f"weights-{step}.safetensors":
            old.unlink()
    for old in folder.glob("optimizer-*.pt"):
        if old.name != f"optimizer-{step}.pt":
            old.unlink()


def load_stage_checkpoint(folder: Path, module: nn.Module, ema: dict[str, Tensor] | None,
                          optimizer: torch.optim.Optimizer) -> int:
    """Restore the latest stage checkpoint in ``folder``; return its step (0 if none)."""
    marker = folder / "checkpoint.json"
    if not marker.is_file():
        return 0
    import json

    step = int(json.loads(marker.read_text())["step"])
    tensors = load_file(str(folder / f"weights-{step}.safetensors"))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        for name in ema:
            ema[name].copy_(tensors.get(f"ema.{name}", module.state_dict()[name]))
    optimizer.load_state_dict(torch.load(folder / f"optimizer-{step}.pt", weights_only=True))
    return step


# ---- the generic stage loop ------------------------------------------------------------------
@dataclass
class Stage:
    """One training stage: what to train and how to compute its loss on a batch."""

    name: str  # "autoencoder" or "dynamics"
    module: nn.Module  # the parameters being trained
    cfg: StageConfig
    sampler: SegmentSampler  # the global-batch sampler over training episodes
    loss: Callable[[nn.Module, Batch, torch.Generator, slice], tuple[Tensor, dict[str, Tensor]]]
    media: Callable[[int, Any], None] | None = None  # logs images/videos at a step


def prefetched_batches(sampler: SegmentSampler, rows: slice, start: int, stop: int,
                       workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """The batches of steps ``start .. stop - 1`` (this process's ``rows`` of each), in order.

    With ``workers > 0``, worker processes of a ``torch.utils.data.DataLoader`` cut the next
    batches while the model trains on this one; ``pin_memory`` puts them in page-locked
    memory so the copy to a GPU overlaps compute. A batch depends only on its step, so the
    result is the same for any number of workers.
    """
    from torch.utils.data import DataLoader, Dataset

    class _Steps(Dataset[Batch]):
        def __len__(self) -> int:
            return stop - start

        def __getitem__(self, index: int) -> Batch:
            return sampler.batch(start + index, rows)

    if workers <= 0:
        for step in range(start, stop):
            batch = sampler.batch(step, rows)
            yield batch.pin_memory() if pin_memory else batch
        return
    yield from DataLoader(_Steps(), batch_size=None, shuffle=False, num_workers=workers,
                          pin_memory=pin_memory, prefetch_factor=4)


def default_workers(device: torch.device) -> int:
    """Data-loading workers when none are asked for: none on CPU (the cores are busy
    training), up to 4 per GPU process."""
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // max(1, torch.cuda.device_count()) - 1))


def run_stage(stage: Stage, folder: Path, proc: Distributed, seed: int, writer: Any,
              progress: bool = True, workers: int | None = None, compile: bool = False,
              on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one stage to ``cfg.steps`` (resuming from ``folder``); returns its figures.

    ``workers``: data-loading worker processes (default: :func:`default_workers`).
    ``compile``: run the forward and backward passes through ``torch.compile`` (the
    module itself, its checkpoints and EMA stay as they are).
    ``on_step``: called with the number of steps done after each step (timing, hooks).
    The module's weights are left at the EMA weights when EMA is on.
    """
    from tqdm import tqdm

    cfg = stage.cfg
    module = stage.module.to(proc.device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    ema = ({k: v.detach().clone() for k, v in module.state_dict().items()}
           if cfg.ema_decay > 0 else None)
    start = load_stage_checkpoint(folder, module, ema, optimizer)
    check_same_start(proc, start, folder)
    rows = proc.rows(cfg.batch_size)
    module.train()
    step_flops = measure_step_flops(stage, module, proc, seed, rows, start)
    trained: nn.Module = module
    if proc.world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            module, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    if compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {stage.name}", unit="step",
               disable=not (progress and proc.is_main), dynamic_ncols=True)
    started = time.perf_counter()
    metrics: dict[str, Tensor] = {}
    batches = prefetched_batches(
        stage.sampler, rows, start, cfg.steps,
        default_workers(proc.device) if workers is None else workers,
        pin_memory=proc.device.type == "cuda")
    for step, host_batch in zip(range(start, cfg.steps), batches, strict=True):
        batch = host_batch.to(proc.device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with precision_context(cfg.precision, proc.device):
            loss, metrics = stage.loss(trained, batch, step_generator(seed, step, proc.device),
                                       rows)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{stage.name} loss became {loss.item()} at step {step}; the last good "
                f"checkpoint in {folder} is kept. Lower the learning rate (StageConfig.lr) or "
                "use precision fp32, then re-run the same command to resume from it"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            update_ema(ema, module, ema_decay_at(cfg.ema_decay, step))
        done = step + 1
        if proc.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
            for name, value in metrics.items():
                writer.add_scalar(f"{stage.name}/{name}", float(value), done)
            writer.add_scalar(f"{stage.name}/lr", learning_rate(cfg, step), done)
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()
                             if k in ("loss", "psnr")}, refresh=False)
        if stage.media is not None and proc.is_main and cfg.media_every and done % cfg.media_every == 0:
            stage.media(done, writer)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            if proc.is_main:
                save_stage_checkpoint(folder, done, module, ema, optimizer,
                                      {k: float(v) for k, v in metrics.items()})
            barrier(proc)
        bar.update(1)
        if on_step is not None:
            on_step(done)
    bar.close()
    if ema is not None:
        module.load_state_dict(ema)
    module.eval()
    seconds = time.perf_counter() - started
    return {"steps": cfg.steps, "resumed_from": start, "seconds": round(seconds, 1),
            "peak_memory_gib": peak_memory_gib(),
            # forward + backward of one optimiser step (all processes), and of the stage
            "flops_per_step": step_flops, "train_flops": step_flops * cfg.steps,
            "final": {k: float(v) for k, v in metrics.items()}}


def measure_step_flops(stage: Stage, module: nn.Module, proc: Distributed, seed: int,
                       rows: slice, step: int) -> float:
    """Floating-point operations of one optimiser step's forward and backward pass, summed
    over processes, counted by ``torch.utils.flop_counter`` on the batch of ``step`` (matrix
    products, convolutions and attention; element-wise work is left out, as usual). The
    gradients are discarded, so training goes on exactly as without the count."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = stage.sampler.batch(step, rows).to(proc.device)
    counter = FlopCounterMode(display=False)
    with counter, precision_context(stage.cfg.precision, proc.device):
        loss, _ = stage.loss(module, batch, step_generator(seed, step, proc.device), rows)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops() * proc.world_size)


def peak_memory_gib() -> float:
    """Peak resident memory of this process so far (GiB), from the OS."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 2)


# ---- the two stages ----------------------------------------------------------------------------
def autoencoder_loss(module: nn.Module, batch: Batch, generator: torch.Generator,
                     rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
    """Reconstruction loss; ``module`` is a :class:`_ReconstructionForward`, maybe DDP-wrapped
    (the forward must go through the wrapper so gradients are synchronised)."""
    return module(batch.frames)  # type: ignore[no-any-return]


class _ReconstructionForward(nn.Module):
    """Autoencoder whose forward is its reconstruction loss (what DDP wraps)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, frames: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.autoencoder.reconstruction_loss(frames)


def dynamics_loss_fn(model: WorldModel) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    objective = model.config.objective
    num_actions = model.num_actions

    def loss(module: nn.Module, batch: Batch, generator: torch.Generator,
             rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
        incoming = batch.incoming_actions(unknown=num_actions)
        zeros = torch.zeros_like(batch.rewards[:, :1])
        incoming_rewards = torch.cat([zeros, batch.rewards[:, :-1]], dim=1)
        incoming_ends = torch.cat([zeros, batch.terminated[:, :-1].float()], dim=1)
        return objective.loss(_DenoiserView(module, model.denoiser), batch.frames.float(),
                              incoming, incoming_rewards, incoming_ends, None, generator,
                              rows=rows, row_weights=batch.weights)

    return loss


class _DenoiserView:
    """The objective's view of a (possibly DDP-wrapped) denoiser: call through the wrapper,
    read the preconditioning settings from the module."""

    def __init__(self, wrapped: nn.Module, denoiser: nn.Module) -> None:
        self._wrapped = wrapped
        self.cfg = denoiser.cfg
        self.num_actions = denoiser.num_actions

    def __call__(self, *args: Any) -> Any:
        return self._wrapped(*args)


def load_finished_autoencoder(model: WorldModel, run: Path) -> None:
    """Load the finished compression network of the training run ``run`` into ``model``."""
    final = run / "autoencoder" / "final.safetensors"
    if not final.is_file():
        raise ConfigError(f"{run} has no finished autoencoder; run `worldsim train` with "
                          "the autoencoder stage first (drop --stage)")
    model.autoencoder.load_state_dict(load_file(str(final)))


def autoencoder_stage(model: WorldModel, train_set: EpisodeDataset, cfg: StageConfig,
                      seed: int, held_out: EpisodeDataset | None = None) -> Stage:
    """The compression network's stage (reconstructions of ``held_out`` logged as media)."""
    sampler = SegmentSampler(train_set, cfg.segment_length, cfg.batch_size, seed)
    media = None if held_out is None else (
        lambda step, writer: _log_reconstructions(model, held_out, step, writer))
    return Stage("autoencoder", _ReconstructionForward(model.autoencoder), cfg, sampler,
                 autoencoder_loss, media=media)


def dynamics_stage(model: WorldModel, train_set: EpisodeDataset, latents: list[np.ndarray],
                   cfg: StageConfig, seed: int,
                   held_out: EpisodeDataset | None = None) -> Stage:
    """The dynamics model's stage on the encoded ``latents`` of ``train_set`` (dreams from
    ``held_out`` logged as media)."""
    sampler = SegmentSampler(train_set, cfg.segment_length, cfg.batch_size, seed,
                             frame_arrays=latents, end_fraction=cfg.end_fraction)
    media = None if held_out is None else (
        lambda step, writer: _log_dream(model, held_out, step, writer))
    return Stage("dynamics", model.denoiser, cfg, sampler, dynamics_loss_fn(model), media=media)


@torch.no_grad()
def encode_dataset(model: WorldModel, dataset: EpisodeDataset, cache_file: Path,
                   batch_frames: int = 512, progress: bool = True,
                   precision: str = "fp32") -> list[np.ndarray]:
    """Latents ``(T+1, c, h, w)`` float32 of every episode, cached in ``cache_file``.

    ``precision="bf16"`` encodes ~3x faster on CPUs with bf16 units; the cache stores
    float16 either way, and the dynamics train on noise-augmented latents, so the rounding
    is far below what they are taught to tolerate.
    """
    from tqdm import tqdm

    names = [entry.file for entry in dataset.entries]
    if cache_file.is_file():
        with safe_open(str(cache_file), framework="np") as handle:
            if set(names) <= set(handle.keys()):
                return [handle.get_tensor(name).astype(np.float32) for name in names]
    latents: dict[str, np.ndarray] = {}
    model.autoencoder.eval()
    for position in tqdm(range(len(dataset)), desc="encode episodes", unit="ep",
                         disable=not progress, dynamic_ncols=True):
        reader = dataset.file(position)
        with model.autocast(precision):
            encoded = model.encode_episode(reader.frames(0, reader.num_frames), batch_frames)
        # C order: encoder output is channels-last, and safetensors writes raw buffers
        latents[dataset.entries[position].file] = np.ascontiguousarray(
            encoded.float().cpu().numpy(), dtype=np.float16)
    with atomic_path(cache_file) as tmp:
        from safetensors.numpy import save_file as save_numpy

        save_numpy(latents, str(tmp))
    return [latents[name].astype(np.float32) for name in names]


# ---- the whole job ---------------------------------------------------------------------------
def train_world_model(data: str | Path, out: str | Path, config: WorldModelConfig | None = None,
                      preset_name: str = "small", stages: tuple[str, ...] = STAGES,
                      seed: int = 0, device: str = "auto", progress: bool = True,
                      workers: int | None = None, compile: bool = False) -> Path:
    """Train (or resume) a world model on a recorded dataset.

    Args:
        data: dataset folder from ``worldsim collect``.
        out: run folder; re-running with the same folder resumes.
        config: full configuration; default: the preset ``preset_name``.
        preset_name: ``tiny``, ``small`` or ``base``.
        stages: which stages to run; ``("dynamics",)`` needs a finished autoencoder in ``out``.
        seed: base seed of the run.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress bars on the main process.
        workers: data-loading worker processes per process (default: none on CPU, up to 4
            per GPU); the weights reached do not depend on it.
        compile: train through ``torch.compile`` (faster steps after a compile of a minute
            or two; needs a C++ compiler on CPU).

    Returns:
        The path of the finished world model checkpoint.
    """
    from torch.utils.tensorboard import SummaryWriter

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    proc = setup_distributed(device)
    seed_everything(seed, proc.rank)
    run = Path(out)
    dataset = EpisodeDataset(data)
    config = config or preset(preset_name, num_actions=dataset.num_actions)
    if config.dynamics.num_actions != dataset.num_actions:
        raise ConfigError(f"config is for {config.dynamics.num_actions} actions but {data} has "
                          f"{dataset.num_actions}")
    _check_run_matches(run, dataset, config)
    checkpoint = run / "world_model" / "model.safetensors"
    if checkpoint.is_file() and stages == STAGES and all(
            _stage_step(run / name) >= getattr(config, f"{name}_training").steps
            for name in STAGES):
        _save_sampler(checkpoint, config.sampler, proc)
        return checkpoint  # finished earlier: nothing to retrain
    train_set, held_out = dataset.split(config.holdout_fraction)
    model = WorldModel(config, WorldModelInfo(
        env=dataset.env, env_options=dataset.info.get("env_options", {}),
        frame_size=dataset.frame_size, action_names=tuple(dataset.info["action_names"])))
    model.to(proc.device)
    writer = SummaryWriter(str(run / "tb")) if proc.is_main else None
    report = _read_report(run)
    report.update(data=str(data), dataset=dataset_stats(dataset), machine=machine_info(),
                  world_size=proc.world_size, device=str(proc.device), seed=seed)

    if "autoencoder" in stages:
        ae_cfg = config.autoencoder_training
        report["autoencoder"] = run_stage(
            autoencoder_stage(model, train_set, ae_cfg, seed, held_out),
            run / "autoencoder", proc, seed, writer, progress, workers, compile)
        _fit_latent_stats(model, train_set, seed)
        report["autoencoder"]["heldout_psnr"] = heldout_reconstruction_psnr(model, held_out)
        if proc.is_main:
            save_file({k: v.cpu().contiguous() for k, v in model.autoencoder.state_dict().items()},
                      str(run / "autoencoder" / "final.safetensors"))
            _log_reconstructions(model, held_out, ae_cfg.steps, writer)
        barrier(proc)
    else:
        load_finished_autoencoder(model, run)

    if "dynamics" in stages:
        dyn_cfg = config.dynamics_training
        if dyn_cfg.segment_length > config.dynamics.context_frames + 1:
            raise ConfigError("dynamics segment_length may be at most context_frames + 1")
        latents = encode_dataset(model, train_set, run / "latents" / "train.safetensors",
                                 progress=progress and proc.is_main,
                                 precision=dyn_cfg.precision)
        report["dynamics"] = run_stage(
            dynamics_stage(model, train_set, latents, dyn_cfg, seed, held_out),
            run / "dynamics", proc, seed, writer, progress, workers, compile)
        if proc.is_main:
            _log_dream(model, held_out, dyn_cfg.steps, writer)

    model.info.trained = {k: report[k] for k in ("autoencoder", "dynamics") if k in report}
    model.info.trained.update(machine=report["machine"], world_size=proc.world_size, seed=seed,
                              data=str(data))
    model.set_prompts(*opening_clips(held_out, config.dynamics.context_frames))
    if proc.is_main:
        model.save(checkpoint)
        write_json_atomic(run / "train.json", report)
        writer.close()
    barrier(proc)
    return checkpoint


def _save_sampler(checkpoint: Path, sampler: EDMSampler, proc: Any) -> None:
    """Give a finished model ``sampler`` as its dream default (rewritten only if it differs)."""
    model = WorldModel.load(checkpoint)
    if model.config.sampler != sampler and proc.is_main:
        model.config.sampler = sampler  # what save() writes; the next load dreams with it
        model.save(checkpoint)
    barrier(proc)


def _stage_step(folder: Path) -> int:
    """The step of a stage's latest checkpoint (0 if none)."""
    import json

    marker = folder / "checkpoint.json"
    return int(json.loads(marker.read_text())["step"]) if marker.is_file() else 0


def _check_run_matches(run: Path, dataset: EpisodeDataset, config: WorldModelConfig) -> None:
    """A run folder can only be resumed with the data and config it started with."""
    import json

    stamp = run / "run.json"
    wanted = {"env": dataset.env, "frame_size": list(dataset.frame_size),
              "num_actions": dataset.num_actions, "config": config.to_dict()}
    if stamp.is_file():
        previous = json.loads(stamp.read_text())
        if isinstance(previous.get("config"), dict):  # fields added since get their defaults
            try:
                previous["config"] = json.loads(json.dumps(
                    WorldModelConfig.from_dict(previous["config"]).to_dict()))
            except (ConfigError, TypeError, ValueError):
                pass  # left as it is: it then differs, and the error below says so
        wanted = json.loads(json.dumps(wanted))
        if isinstance(previous.get("config"), dict):  # the sampler is not used in training
            previous["config"]["sampler"] = wanted["config"]["sampler"]
        if previous != wanted:
            changed = [k for k in wanted if wanted[k] != previous.get(k)]
            raise ConfigError(
                f"{run} holds a run with other settings ({', '.join(changed)}); use another "
                "--out, or the same data and preset to resume it"
            )
        return
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, wanted)


def _read_report(run: Path) -> dict[str, Any]:
    import json

    path = run / "train.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def opening_clips(dataset: EpisodeDataset, frames: int, count: int = 16) -> tuple[Tensor, Tensor]:
    """The first ``frames`` frames (and the actions between them) of up to ``count``
    episodes: real starts a dream can be prompted with."""
    clips, actions = [], []
    for position in range(min(count, len(dataset))):
        reader = dataset.file(position)
        if reader.num_frames < frames:
            continue
        clips.append(torch.from_numpy(reader.frames(0, frames)).permute(0, 3, 1, 2))
        actions.append(torch.from_numpy(reader.array("actions")[: frames - 1]))
    if not clips:
        raise ConfigError(f"no held-out episode has {frames} frames to prompt dreams with")
    return torch.stack(clips), torch.stack(actions)


@torch.no_grad()
def _fit_latent_stats(model: WorldModel, dataset: EpisodeDataset, seed: int) -> None:
    sampler = SegmentSampler(dataset, 1, 256, seed + 1)
    frames = torch.cat([sampler.batch(i).frames for i in range(4)]).to(model.device)
    model.autoencoder.fit_latent_stats(model.autoencoder.encode_raw(frames))


@torch.no_grad()
def heldout_reconstruction_psnr(model: WorldModel, dataset: EpisodeDataset,
                                frames: int = 1024) -> float:
    """Mean PSNR (dB) of autoencoding held-out frames (uint8 in, uint8 out)."""
    sampler = SegmentSampler(dataset, 1, 256, seed=12345)
    errors = []
    for step in range(max(1, frames // 256)):
        batch = sampler.batch(step).frames.to(model.device)  # (B, 1, 3, H, W)
        decoded = model.decode(model.encode(batch))
        errors.append(psnr(decoded, batch))
    return float(torch.cat(errors).mean())


def _log_reconstructions(model: WorldModel, dataset: EpisodeDataset, step: int, writer: Any) -> None:
    """Held-out frames (top row) and their reconstructions (bottom row) as an image."""
    from worldsim.media import frame_grid

    model.eval()
    frames = SegmentSampler(dataset, 1, 8, seed=777).batch(0).frames.to(model.device)
    decoded = model.decode(model.encode(frames))
    grid = frame_grid(torch.stack([frames[:, 0], decoded[:, 0]]))  # (H', W', 3)
    writer.add_image("autoencoder/real_vs_reconstruction", grid, step, dataformats="HWC")
    model.autoencoder.train()


def _log_dream(model: WorldModel, dataset: EpisodeDataset, step: int, writer: Any,
               horizon: int = 32) -> None:
    """A held-out clip and the model's open-loop dream under the same actions: an image grid
    (real row over predicted row) and a side-by-side video."""
    from worldsim.media import add_video_summary, frame_grid, side_by_side

    model.eval()
    context = model.config.dynamics.context_frames
    length = min(context + horizon, max(e.length + 1 for e in dataset.entries))
    sampler = SegmentSampler(dataset, length, 4, seed=4242)
    batch = sampler.batch(0)
    prompt = min(context, length - 1)
    generator = torch.Generator(device=model.device).manual_seed(0)
    predicted, _, _ = model.imagine(batch.frames[:, :prompt], batch.actions[:, :prompt - 1],
                                    batch.actions[:, prompt - 1:length - 1], generator)
    real = batch.frames[:, prompt:].to(predicted.device)  # (B, K, 3, H, W)
    shown = min(8, real.shape[1])
    grid = frame_grid(torch.stack([real[0, :shown], predicted[0, :shown].to(real.device)]))
    writer.add_image("dynamics/real_vs_dream", grid, step, dataformats="HWC")
    add_video_summary(writer, "dynamics/real_vs_dream_video", side_by_side(real, predicted), step)
    model.denoiser.train()

"""CLI subcommands of the model library: ``worldsim train``."""

from __future__ import annotations

import argparse

from worldsim.sampler_settings import SAMPLER_KEYS


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a world model (compression network, then dynamics) on a dataset",
        description="Train the video compression network, then the action-conditioned "
                    "diffusion transformer, on episodes recorded by `worldsim collect`. "
                    "Re-running with the same --out resumes where it stopped. Runs unchanged "
                    "under `torchrun --nproc_per_node=N` (DistributedDataParallel).")
    train.add_argument("--data", required=True, help="dataset folder from `worldsim collect`")
    train.add_argument("--out", required=True,
                       help="run folder: checkpoints, TensorBoard logs (RUN/tb), the final "
                            "model in RUN/world_model/; resumed if it exists")
    train.add_argument("--preset", default="small", choices=["tiny", "small", "base"],
                       help="model and training size: tiny (tests, seconds), small (2-core CPU, "
                            "under an hour), base (one GPU) (default: small)")
    train.add_argument("--stage", default="all", choices=["all", "autoencoder", "dynamics"],
                       help="train both stages, or only one; 'dynamics' needs a finished "
                            "autoencoder in --out (default: all)")
    train.add_argument("--autoencoder-steps", type=int, default=None,
                       help="override the preset's optimiser steps for the compression network")
    train.add_argument("--dynamics-steps", type=int, default=None,
                       help="override the preset's optimiser steps for the dynamics model")
    train.add_argument("--autoencoder-batch", type=int, default=None, metavar="N",
                       help="override the preset's global batch (frames) for the compression "
                            "network; split evenly over torchrun's processes")
    train.add_argument("--dynamics-batch", type=int, default=None, metavar="N",
                       help="override the preset's global batch (segments) for the dynamics "
                            "model, e.g. 256 or more on a GPU; split evenly over torchrun's "
                            "processes")
    train.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                       help="training precision for both stages (default: the preset's)")
    train.add_argument("--residual", action="store_true",
                       help="the denoiser diffuses each frame's change from the frame before it "
                            "instead of the frame (stops static things drifting and fading)")
    train.add_argument("--change-weight", type=float, default=0.0, metavar="W",
                       help="weight the denoising loss towards the latent cells that change "
                            "from the previous frame: a cell counts 1 + W x its change, so "
                            "small moving objects are not left out (default: 0, all alike)")
    train.add_argument("--foresight-head", action="store_true",
                       help="train a foresight head with the model: from each frame, the "
                            "chance per action that the next step ends the episode, which "
                            "dreams then end by (a trained model gets one with `worldsim "
                            "train-foresight`)")
    train.add_argument("--sampler", default="", metavar="KEY=VALUE,...",
                       help="the dream sampler saved with the model, used by dream, play, "
                            "bench and train-agent unless they change it, e.g. "
                            f"denoise_steps=16,sigma_max=20,temperature=1.3 (keys: {SAMPLER_KEYS}; "
                            "default: the preset's). Training does not use it: re-run on a "
                            "finished run to change it")
    train.add_argument("--seed", type=int, default=0, help="base seed of the run (default: 0)")
    train.add_argument("--device", default="auto",
                       help="auto (CUDA if available), cpu, or cuda (default: auto)")
    train.add_argument("--workers", type=int, default=None,
                       help="data-loading worker processes per training process, cutting the "
                            "next batches while the model trains (default: 0 on CPU, where "
                            "the cores are busy training; up to 4 per GPU); the weights "
                            "reached do not depend on it")
    train.add_argument("--compile", action="store_true",
                       help="train through torch.compile: faster steps after a compile of a "
                            "minute or two; needs a C++ compiler on CPU; checkpoints are "
                            "unchanged")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=run_train)

    head = subparsers.add_parser(
        "train-foresight",
        help="give a trained world model a foresight or hold head (minutes on a CPU)",
        description="Fit a foresight head to a trained, frozen world model: from the model's "
                    "state after each frame, the chance per action that the next step ends "
                    "the episode, read before the next frame is drawn. Dreams of the new "
                    "model end by it (`worldsim dream --ends`, agents' dream envs), which "
                    "sees deaths coming that drawn frames lose. Fitted on a dataset of the "
                    "model's env with its last share of episodes held out (as `worldsim "
                    "train` holds them out), scored there (AUC, calibration); the model's "
                    "other weights are unchanged. With --hold, a hold head instead: from the "
                    "same state, per action, the chance that holding it for the next H steps "
                    "ends the episode, fitted on a dataset with branches (every action held "
                    "H steps from recorded states in the replayed game) and scored by how "
                    "often its safest move survives; `plan:MODEL,search=head` plays by it.")
    head.add_argument("--checkpoint", required=True,
                      help="the world model: run folder, model.safetensors or shipped name")
    head.add_argument("--data", required=True, nargs="+", metavar="DIR",
                      help="dataset folder(s) of the model's env from `worldsim collect` "
                           "(the one it was trained on is best: same held-out episodes); "
                           "several are pooled, each split into fitted and held-out episodes")
    head.add_argument("--out", required=True,
                      help="where to write the model with the head (a folder gets "
                           "model.safetensors and config.json)")
    head.add_argument("--holdout", type=float, default=0.1,
                      help="share of the episodes (the last ones) held out to stop the fit "
                           "and score it (default: 0.1, as `worldsim train`)")
    head.add_argument("--episodes", type=int, default=None, metavar="N",
                      help="use only the first N training episodes (and N/9 held out): "
                           "quick runs (default: all)")
    head.add_argument("--epochs", type=int, default=None,
                      help="most passes over the states; stops earlier when the held-out "
                           "loss stops falling (default: 40, with --hold 100)")
    head.add_argument("--hold", action="store_true",
                      help="fit the hold head instead: from the model's state, per action, "
                           "the chance that holding it for the dataset's branch steps ends "
                           "the episode (which move survives). Needs a dataset with "
                           "branches (`worldsim collect --branch-steps 8`); planners read "
                           "it with plan:MODEL,search=head")
    head.add_argument("--drawn-steps", type=int, nargs="+", default=[], metavar="K",
                      help="with --hold: also fit the head at the states a dream reaches "
                           "after drawing the last K frames itself (prompted with the real "
                           "frames before them, the actions really played), for each K, with "
                           "the same fates; a head fitted at real states only loses most of "
                           "its ranking one drawn frame into a dream (`benchmarks.dodge "
                           "--drawn-steps`). Costs K model steps per state (default: none)")
    head.add_argument("--drawn-share", type=float, default=1.0, metavar="F",
                      help="with --drawn-steps: draw only this share of the states, picked "
                           "by --seed (default: 1, all)")
    head.add_argument("--every-state", action="store_true",
                      help="with --hold: fit the head at every state the collection examined, "
                           "decisive or not (the fates each episode keeps), instead of only "
                           "where the moves' fates differ: its risk is then the chance of "
                           "dying, and dreams it ends (--ends hold) die about as often as the "
                           "game. Needs data recorded with the fates kept (this version of "
                           "`worldsim collect --branch-steps`)")
    head.add_argument("--fate", choices=["end", "hit"], default="end",
                      help="with --hold: what the head's risk is the chance of: 'end', "
                           "holding the action ends the episode within the branch steps; "
                           "'hit', the player loses health or the episode ends (a hit is "
                           "decided by what the frames show, a death also by health "
                           "TakeCover does not draw). 'hit' needs data whose collection "
                           "kept the hits (this version of `worldsim collect "
                           "--branch-steps`, on a game that reports health) (default: end)")
    head.add_argument("--tokens", action="store_true",
                      help="with --hold: the head reads every token of the frame (each "
                           "projected, then together) instead of their mean, which blurs "
                           "where things are; the model's state, what state agents observe, "
                           "is then those tokens (16 x 192 for the small model)")
    head.add_argument("--members", type=int, default=1, metavar="K",
                      help="with --hold: fit K heads on the same states from seeds --seed, "
                           "--seed + 1, ... and keep them all; the head's risk is their mean "
                           "chance, which ranks the moves at near ties more steadily than one "
                           "head (each member's figures are kept too; default: 1)")
    head.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                      help="the model's precision while reading the states, as in dreams "
                           "(default: bf16)")
    head.add_argument("--half", action="store_true",
                      help="store the weights in float16 (half the file, as shipped models)")
    head.add_argument("--seed", type=int, default=0,
                      help="seed of the head's initial weights and minibatches (default: 0)")
    head.add_argument("--quiet", action="store_true", help="no progress bars")
    head.set_defaults(run=run_train_foresight)


def run_train(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from worldsim.config import preset
    from worldsim.data import read_dataset_info
    from worldsim.diffusion.edm import parse_sampler_settings, with_sampler_settings
    from worldsim.errors import ConfigError
    from worldsim.train import STAGES, train_world_model

    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    info = read_dataset_info(Path(args.data))
    config = preset(args.preset, num_actions=int(info["num_actions"]))
    if args.autoencoder_steps is not None:
        config.autoencoder_training.steps = args.autoencoder_steps
    if args.dynamics_steps is not None:
        config.dynamics_training.steps = args.dynamics_steps
    for stage in ("autoencoder", "dynamics"):
        batch = getattr(args, f"{stage}_batch")
        if batch is not None:
            if batch < 1:
                raise ConfigError(f"--{stage}-batch must be at least 1, got {batch}")
            getattr(config, f"{stage}_training").batch_size = batch
    if args.precision is not None:
        config.autoencoder_training.precision = args.precision
        config.dynamics_training.precision = args.precision
    config.denoiser.residual = args.residual
    config.dynamics.foresight_head = args.foresight_head
    config.objective = dataclasses.replace(config.objective, change_weight=args.change_weight)
    config.sampler = with_sampler_settings(config.sampler, parse_sampler_settings(args.sampler))
    stages = STAGES if args.stage == "all" else (args.stage,)
    checkpoint = train_world_model(args.data, args.out, config, stages=stages, seed=args.seed,
                                   device=args.device, progress=not args.quiet,
                                   workers=args.workers, compile=args.compile)
    print(f"world model: {checkpoint}")
    print(f"TensorBoard: tensorboard --logdir {Path(args.out) / 'tb'}")
    return 0


def run_train_foresight(args: argparse.Namespace) -> int:
    import json

    import torch

    from worldsim.foresight import train_foresight

    record = train_foresight(args.checkpoint, args.data, args.out, holdout=args.holdout,
                             episodes=args.episodes, epochs=args.epochs,
                             precision=args.precision, seed=args.seed,
                             dtype=torch.float16 if args.half else None, hold=args.hold,
                             drawn_steps=args.drawn_steps, drawn_share=args.drawn_share,
                             every_state=args.every_state, fate=args.fate,
                             tokens=args.tokens, members=args.members,
                             progress=not args.quiet)
    keys = ("accuracy", "chance", "fixed_action_accuracy", "contrast_auc", "held_out_loss",
            "decisive_states", "held_out_states", "mean_risk", "end_share",
            "wall_seconds") if args.hold else (
        "held_out_auc", "held_out_loss", "mean_probability", "end_rate", "held_out_ends",
        "wall_seconds")
    shown = {key: record[key] for key in keys}
    for k, figures in record.get("drawn", {}).items():
        shown[f"after {k} drawn frames"] = {key: figures[key] for key in
                                            ("accuracy", "contrast_auc", "decisive_states",
                                             "mean_risk", "end_share")}
    print(json.dumps(shown, indent=2))
    print(f"world model with a {'hold' if args.hold else 'foresight'} head: {args.out}")
    return 0

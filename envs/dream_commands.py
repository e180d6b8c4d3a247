"""CLI subcommands for dreams: ``worldsim dream`` (film one) and ``worldsim play``."""

from __future__ import annotations

import argparse
from typing import Any


def _add_dream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="takecover",
                        help="world model: a run folder from `worldsim train`, a "
                             "model.safetensors file, or a shipped name (default: takecover)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dream (default: 0)")
    parser.add_argument("--dataset", default=None,
                        help="recorded play to draw prompts from (default: the real opening "
                             "clips stored in the checkpoint)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature: higher makes the dream less predictable "
                             "(default: the checkpoint's)")
    parser.add_argument("--denoise-steps", type=int, default=None,
                        help="network passes per frame (default: the checkpoint's)")
    parser.add_argument("--termination", choices=["sample", "threshold", "never"],
                        default="sample",
                        help="how the termination head ends a dream: sample its probability, "
                             "threshold it at 0.5, or never (default: sample)")
    parser.add_argument("--ends", choices=["auto", "frame", "foresight"], default="auto",
                        help="which head ends a dream: the termination head on the drawn "
                             "frame, or the foresight head on the frame before and the action "
                             "(`worldsim train-foresight`); auto: foresight if the model has "
                             "one (default: auto)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="inference precision (default: fp32)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if available), cpu, or cuda (default: auto)")
    parser.add_argument("--scale", type=int, default=4,
                        help="pixel upscaling of the frames (default: 4)")


def register(subparsers: argparse._SubParsersAction) -> None:
    dream = subparsers.add_parser(
        "dream", help="film a dream of a world model (or the real game beside it)",
        description="Play a policy inside the world model's dream and write the frames as "
                    "an .mp4 or .gif. With --compare, play the real game, prompt the dream "
                    "with its first frames, replay the same actions in the dream and put "
                    "real | dream side by side over a strip plotting the PSNR of each frame.")
    _add_dream_options(dream)
    dream.add_argument("--steps", type=int, default=300, help="dream steps (default: 300)")
    dream.add_argument("--policy", default="random",
                       help="who acts: 'random', 'sticky[:K]' or a trained agent's PATH "
                            "(default: random)")
    dream.add_argument("--out", default="dream.mp4",
                       help="video file, .mp4 or .gif (default: dream.mp4)")
    dream.add_argument("--compare", action="store_true",
                       help="real game and dream side by side from the same start frames and "
                            "actions, with PSNR per frame in a strip below")
    dream.add_argument("--fps", type=float, default=None,
                       help="playback rate (default: the game's, 35 for VizDoom)")
    dream.set_defaults(run=run_dream)

    play = subparsers.add_parser(
        "play", help="play a world model's dream with the keyboard",
        description="Open a window and play the dream: arrow keys and space act (the "
                    "mapping is printed), digits pick an action by index, R restarts, Esc "
                    "quits. Runs at the game's rate unless --fast. Headless: set "
                    "SDL_VIDEODRIVER=dummy and pass --script.")
    _add_dream_options(play)
    play.add_argument("--side-by-side", action="store_true",
                      help="run the real game with the same key presses beside the dream")
    play.add_argument("--record", default=None, help="film the window to this .mp4 or .gif")
    play.add_argument("--fast", action="store_true",
                      help="step as fast as possible instead of at the game's rate")
    play.add_argument("--fps", type=float, default=None,
                      help="steps per second (default: the game's, 35 for VizDoom)")
    play.add_argument("--script", default=None,
                      help="scripted key presses instead of the keyboard, e.g. "
                           "'right*10,left*5,r,none*3' (KEY*N holds KEY for N steps)")
    play.add_argument("--max-steps", type=int, default=None,
                      help="stop after this many dream steps")
    play.set_defaults(run=run_play)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from worldsim.utils import get_device
    from worldsim.world_model import WorldModel

    model = WorldModel.load(args.checkpoint, get_device(args.device))
    options = {"dataset": args.dataset, "temperature": args.temperature,
               "denoise_steps": args.denoise_steps, "termination": args.termination,
               "ends": args.ends, "precision": args.precision}
    return model, options


def run_dream(args: argparse.Namespace) -> int:
    from envs.dream import game_timing
    from envs.video import VideoRecorder, compare, comparison_video, dream_clip
    from worldsim.media import upscale

    model, options = _load(args)
    fps = args.fps or game_timing(model)[0]
    if args.compare:
        options.pop("termination")  # the comparison runs the whole way
        result = compare(model, args.steps, args.policy, args.seed, **options)
        frames = comparison_video(result, args.scale)
        summary = (f"real vs dream over {len(result.psnr)} steps: PSNR mean "
                   f"{result.psnr.mean():.1f} dB, first {result.psnr[0]:.1f}, last "
                   f"{result.psnr[-1]:.1f}")
    else:
        clip = dream_clip(model, args.steps, args.policy, args.seed, **options)
        frames = upscale(clip.frames, args.scale)
        summary = (f"{len(clip.actions)} dream steps, {len(clip.episode_starts)} dream(s), "
                   f"predicted reward {clip.rewards.sum():.1f}")
    with VideoRecorder(args.out, fps) as recorder:
        for frame in frames:
            recorder.add(frame)
    print(f"{args.out}: {len(frames)} frames at {fps:g} fps; {summary}")
    return 0


def run_play(args: argparse.Namespace) -> int:
    from envs.play import play

    model, options = _load(args)
    result = play(model, seed=args.seed, fast=args.fast, fps=args.fps, scale=args.scale,
                  side_by_side=args.side_by_side, record=args.record, script=args.script,
                  max_steps=args.max_steps, **options)
    recorded = f"; recorded {result.record}" if result.record else ""
    print(f"played {result.steps} dream steps, {result.restarts} restart(s), "
          f"{result.frames} frames{recorded}")
    return 0

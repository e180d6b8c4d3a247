"""Training the world model: a tiny run end to end, resume, torchrun, bad input, the API."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from envs.collect import collect
from worldsim.cli import main as cli_main
from worldsim.config import preset
from worldsim.data import EpisodeDataset, SegmentSampler
from worldsim.errors import CheckpointError, ConfigError
from worldsim.train import (
    TrainingDiverged,
    _stage_step,
    dynamics_loss_fn,
    ema_decay_at,
    train_world_model,
    update_ema,
)
from worldsim.world_model import WorldModel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def takecover_data(tiny_takecover_data: Path) -> Path:
    return tiny_takecover_data


@pytest.fixture
def trained_run(tiny_world_model: Path) -> Path:
    """The session's tiny run (trained with the preset's 30 + 30 steps)."""
    return tiny_world_model


def fixed_dynamics_loss(model: WorldModel, data: Path) -> float:
    """The dynamics objective on a fixed batch with fixed noise (lower is better)."""
    dataset = EpisodeDataset(data)
    sampler = SegmentSampler(dataset, model.config.dynamics_training.segment_length, 16, seed=99)
    batch = sampler.batch(0)
    latents = model.encode(batch.frames)
    batch.frames = latents
    loss_fn = dynamics_loss_fn(model)
    model.denoiser.eval()
    with torch.no_grad():
        loss, _ = loss_fn(model.denoiser, batch, torch.Generator().manual_seed(0), slice(0, 16))
    return float(loss)


def test_tiny_training_run_writes_everything_and_learns(trained_run: Path, takecover_data: Path) -> None:
    report = json.loads((trained_run / "train.json").read_text())
    assert report["autoencoder"]["steps"] == 30 and report["dynamics"]["steps"] == 30
    assert report["machine"]["cpu_count"] >= 1 and report["dataset"]["episodes"] == 6
    # real TensorBoard event files with scalars, images and the dream video
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "autoencoder/psnr" in events.Tags()["scalars"]
    assert "dynamics/loss_denoise" in events.Tags()["scalars"]
    assert {"autoencoder/real_vs_reconstruction", "dynamics/real_vs_dream",
            "dynamics/real_vs_dream_video"} <= set(events.Tags()["images"])
    psnr = [e.value for e in events.Scalars("autoencoder/psnr")]
    assert psnr[-1] > psnr[0] + 1.0, f"autoencoder PSNR did not rise: {psnr}"
    # the dynamics stage lowered its objective against the same model before that stage
    trained = WorldModel.load(trained_run)
    untrained = WorldModel.load(trained_run)
    fresh = WorldModel(trained.config, trained.info)
    untrained.denoiser.load_state_dict(fresh.denoiser.state_dict())
    assert fixed_dynamics_loss(trained, takecover_data) < 0.8 * fixed_dynamics_loss(
        untrained, takecover_data)


def test_checkpoint_round_trip_and_api(trained_run: Path, takecover_data: Path, tmp_path: Path) -> None:
    model = WorldModel.load(trained_run / "world_model" / "model.safetensors")
    assert model.info.env == "vizdoom/TakeCover" and model.num_actions == 3
    assert model.info.action_names == ("none", "left", "right")
    copy_path = model.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "config.json").is_file()
    copy = WorldModel.load(copy_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
    episode = EpisodeDataset(takecover_data).episode(0)
    frames = torch.from_numpy(episode.frames[:4]).permute(0, 3, 1, 2)[None]  # (1, 4, 3, H, W)
    context_actions = torch.from_numpy(episode.actions[:3])[None]
    future = torch.from_numpy(episode.actions[3:8])[None]
    outputs = [m.imagine(frames, context_actions, future, torch.Generator().manual_seed(1))
               for m in (model, copy)]
    predicted, rewards, ends = outputs[0]
    assert predicted.shape == (1, 5, 3, 64, 64) and predicted.dtype == torch.uint8
    assert rewards.shape == (1, 5) and ends.shape == (1, 5)
    assert bool(((ends >= 0) & (ends <= 1)).all())
    assert torch.equal(outputs[0][0], outputs[1][0]), "same weights and seed, same dream"
    with pytest.raises(ConfigError, match="trained for 3 actions"):
        model.imagine(frames, context_actions, torch.tensor([[5]]))
    with pytest.raises(ConfigError, match="trained on 64x64"):
        model.start(torch.zeros(1, 1, 3, 48, 48, dtype=torch.uint8), torch.zeros(1, 0))


def test_bad_checkpoints_are_clear_errors(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no world-model checkpoint"):
        WorldModel.load(tmp_path / "nothing-here")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        WorldModel.load(tmp_path / "junk.safetensors")
    stage_weights = next((trained_run / "dynamics").glob("weights-*.safetensors"))
    with pytest.raises(CheckpointError, match="not a worldsim world model"):
        WorldModel.load(stage_weights)
    # a checkpoint from another format version
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = trained_run / "world_model" / "model.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()["worldsim"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    header["version"] = 999
    save_file(tensors, str(tmp_path / "future.safetensors"), {"worldsim": json.dumps(header)})
    with pytest.raises(CheckpointError, match="version 999"):
        WorldModel.load(tmp_path / "future.safetensors")


def test_resume_after_kill_matches_uninterrupted_run(takecover_data: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(takecover_data), "--preset", "tiny", "--stage", "all",
            "--autoencoder-steps", "20", "--dynamics-steps", "60", "--quiet"]
    assert cli_main([*args, "--out", str(tmp_path / "straight")]) == 0
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "worldsim.cli", *args, "--out", str(run)],
                               env=env, start_new_session=True)
    marker = run / "dynamics" / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if marker.is_file() and json.loads(marker.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(marker.read_text())["step"]
    assert killed_at < 60, "the run finished before it could be killed; lengthen it"
    assert cli_main([*args, "--out", str(run)]) == 0
    report = json.loads((run / "train.json").read_text())
    assert report["dynamics"]["resumed_from"] == killed_at
    straight = load_file(str(tmp_path / "straight" / "world_model" / "model.safetensors"))
    resumed = load_file(str(run / "world_model" / "model.safetensors"))
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_nan_stops_with_message_and_keeps_last_checkpoint(takecover_data: Path, tmp_path: Path) -> None:
    config = preset("tiny", num_actions=3)
    config.autoencoder_training.lr = 1e9  # diverges within a few steps
    config.autoencoder_training.warmup_steps = 1
    config.autoencoder_training.grad_clip = 0
    config.autoencoder_training.checkpoint_every = 1
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as error:
        train_world_model(takecover_data, tmp_path / "run", config, progress=False)
    step = int(str(error.value).split("at step ")[1].split(";")[0])
    saved = json.loads((tmp_path / "run" / "autoencoder" / "checkpoint.json").read_text())
    assert saved["step"] == step
    weights = load_file(str(tmp_path / "run" / "autoencoder" / f"weights-{step}.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_run_folder_refuses_other_data(takecover_data: Path, trained_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "fake"
    collect("fake", episodes=3, out=other, env_options={"max_steps": 20}, progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        train_world_model(other, trained_run, preset_name="tiny", progress=False)


def test_run_started_before_a_config_field_existed_still_resumes(takecover_data: Path,
                                                                tmp_path: Path) -> None:
    from worldsim.data import EpisodeDataset
    from worldsim.train import _check_run_matches

    dataset = EpisodeDataset(takecover_data)
    config = preset("tiny", num_actions=dataset.num_actions)
    run = tmp_path / "run"
    _check_run_matches(run, dataset, config)
    stamp = json.loads((run / "run.json").read_text())
    del stamp["config"]["denoiser"]["residual"]  # as written before the field was added
    (run / "run.json").write_text(json.dumps(stamp))
    _check_run_matches(run, dataset, config)  # the default fills in: same run
    config.denoiser.residual = True  # a real change is still refused
    with pytest.raises(ConfigError, match="other settings"):
        _check_run_matches(run, dataset, config)


def test_frame_size_not_divisible_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "odd"
    collect("fake", episodes=3, out=data, env_options={"max_steps": 20, "frame_size": [36, 36]},
            progress=False)
    with pytest.raises(ConfigError, match="multiple of 8"):
        train_world_model(data, tmp_path / "run", preset_name="tiny", progress=False)


def test_two_process_and_two_node_torchrun_match_one_process(takecover_data: Path, tmp_path: Path) -> None:
    common = ["-m", "worldsim.cli", "train", "--data", str(takecover_data), "--preset", "tiny",
              "--autoencoder-steps", "6", "--dynamics-steps", "6", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-2000:]
    # two "machines": one launcher per node meeting at a c10d rendezvous, as the README's
    # several-machines command does (here both on localhost, --out shared)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=nodes-test",
         *common, "--out", str(tmp_path / "nodes")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-2000:]
    one = load_file(str(tmp_path / "one" / "world_model" / "model.safetensors"))
    for run in ("two", "nodes"):
        other = load_file(str(tmp_path / run / "world_model" / "model.safetensors"))
        assert json.loads((tmp_path / run / "train.json").read_text())["world_size"] == 2
        for name, value in one.items():
            torch.testing.assert_close(other[name], value, rtol=1e-4, atol=1e-5,
                                       msg=f"{run}: {name}")


def _tiny_config(steps: int) -> object:
    config = preset("tiny", num_actions=3)
    config.autoencoder_training.steps = steps
    config.dynamics_training.steps = steps
    return config


def test_data_loading_workers_reach_the_same_weights(takecover_data: Path,
                                                     tmp_path: Path) -> None:
    for workers in (0, 2):
        train_world_model(takecover_data, tmp_path / f"w{workers}", _tiny_config(4),
                          progress=False, workers=workers)
    zero = load_file(str(tmp_path / "w0" / "world_model" / "model.safetensors"))
    two = load_file(str(tmp_path / "w2" / "world_model" / "model.safetensors"))
    assert zero.keys() == two.keys()
    for name, value in zero.items():
        assert torch.equal(two[name], value), name


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_reaches_the_weights_of_eager_training(takecover_data: Path,
                                                                 tmp_path: Path) -> None:
    for name, compiled in (("eager", False), ("compiled", True)):
        train_world_model(takecover_data, tmp_path / name, _tiny_config(3), progress=False,
                          compile=compiled)
    eager = load_file(str(tmp_path / "eager" / "world_model" / "model.safetensors"))
    compiled = load_file(str(tmp_path / "compiled" / "world_model" / "model.safetensors"))
    assert eager.keys() == compiled.keys()  # the checkpoint does not change with compiling
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-3, atol=1e-4, msg=name)


def test_train_speed_benchmark_times_one_and_two_processes(takecover_data: Path,
                                                           tmp_path: Path) -> None:
    from benchmarks.train_speed import main as train_speed

    assert train_speed(["--data", str(takecover_data), "--preset", "tiny", "--configs", "1x1",
                        "2x1", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("train-speed-cpu-*.json")
    configs = json.loads(written.read_text())["results"]["configs"]
    assert configs["1x1"]["world_size"] == 1 and configs["2x1"]["world_size"] == 2
    assert all(row["samples_per_s"] > 0 for row in configs.values())
    assert 0 < configs["2x1"]["scaling_efficiency"]


def _resume_check(rank: int, store: str, steps: tuple[int, int], errors: str) -> None:
    import torch.distributed as dist

    from worldsim.train import Distributed, check_same_start

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        check_same_start(Distributed(rank, 2, torch.device("cpu")), steps[rank], Path("RUN"))
    except ConfigError as error:
        Path(f"{errors}-{rank}").write_text(str(error))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("steps", [(250, 250), (250, 0)])
def test_ranks_resuming_from_different_checkpoints_is_a_clear_error(
        tmp_path: Path, steps: tuple[int, int]) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_resume_check, args=(str(tmp_path / "store"), steps, str(tmp_path / "error")),
             nprocs=2)
    errors = sorted(tmp_path.glob("error-*"))
    if steps[0] == steps[1]:
        assert errors == []
    else:
        assert len(errors) == 2  # every rank stops, none hangs
        assert "shared filesystem" in errors[0].read_text()


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import worldsim.train as train_module

    # process 1 of 2 on a machine with one GPU (as on a one-GPU machine with
    # --nproc_per_node=2): refused before any process group is joined
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(train_module, "get_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--nproc_per_node at most the GPU count"):
        train_module.setup_distributed("cuda")


def test_batch_options_set_each_stage_and_refuse_zero(
        takecover_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--data", str(takecover_data), "--preset", "tiny", "--autoencoder-steps",
            "2", "--dynamics-steps", "2", "--autoencoder-batch", "6", "--dynamics-batch", "3",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    assert cli_main(args) == 0
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["autoencoder_training"]["batch_size"] == 6
    assert config["dynamics_training"]["batch_size"] == 3
    assert cli_main([*args[:-1], str(tmp_path / "zero"), "--dynamics-batch", "0"]) != 0
    assert "--dynamics-batch must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


def test_train_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--out", "--preset", "--stage", "--seed", "--device", "--precision",
                 "--workers", "--compile", "--autoencoder-batch", "--dynamics-batch"):
        assert flag in text
    assert np.char.count(text, "resume") >= 1


def test_latent_cache_round_trip_equals_fresh_encoding(trained_run: Path, takecover_data: Path,
                                                       tmp_path: Path) -> None:
    from worldsim.train import encode_dataset

    model = WorldModel.load(trained_run)
    dataset = EpisodeDataset(takecover_data)
    fresh = encode_dataset(model, dataset, tmp_path / "cache.safetensors", progress=False)
    cached = encode_dataset(model, dataset, tmp_path / "cache.safetensors", progress=False)
    frames = torch.from_numpy(dataset.file(0).frames(0, 40)).permute(0, 3, 1, 2)[None]
    direct = model.encode(frames)[0].numpy()
    np.testing.assert_allclose(fresh[0][:40], direct, atol=1e-2)  # float16 storage
    for a, b in zip(fresh, cached):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_carries_real_prompts(trained_run: Path) -> None:
    model = WorldModel.load(trained_run)
    context = model.config.dynamics.context_frames
    assert model.prompt_frames is not None and model.prompt_actions is not None
    assert model.prompt_frames.shape[1:] == (context, 3, 64, 64)
    assert model.prompt_actions.shape == (model.prompt_frames.shape[0], context - 1)
    frames, actions = model.prompt_frames[:1].repeat(2, 1, 1, 1, 1), model.prompt_actions[:1].repeat(2, 1)
    state = model.start(frames, actions)
    assert model.step(state, torch.tensor([1, 2])).latents.shape[0] == 2
    with pytest.raises(ConfigError, match="2 dreams need one action each"):
        model.step(state, torch.tensor([1, 2, 0]))


def test_half_precision_save_loads_close(trained_run: Path, tmp_path: Path) -> None:
    model = WorldModel.load(trained_run)
    path = model.save(tmp_path / "half", dtype=torch.float16)
    full_size = (trained_run / "world_model" / "model.safetensors").stat().st_size
    assert path.stat().st_size < 0.7 * full_size
    half = WorldModel.load(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), half.state_dict().items()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-3, msg=name)


def test_rerunning_a_finished_run_changes_nothing(trained_run: Path, takecover_data: Path) -> None:
    checkpoint = trained_run / "world_model" / "model.safetensors"
    before = checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()
    assert train_world_model(takecover_data, trained_run, preset_name="tiny",
                             progress=False) == checkpoint
    assert (checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()) == before


def test_shipped_takecover_model_loads_and_dreams() -> None:
    model = WorldModel.load("takecover")
    assert model.info.env == "vizdoom/TakeCover"
    assert model.info.action_names == ("none", "left", "right")
    assert model.prompt_frames is not None
    frames, actions = model.prompt_frames[:2], model.prompt_actions[:2]
    predicted, rewards, ends = model.imagine(frames, actions, torch.tensor([[1, 1], [2, 2]]),
                                             torch.Generator().manual_seed(0))
    assert predicted.shape == (2, 2, 3, 64, 64)
    # a trained model's dream of the next frame stays close to its last real frame
    from worldsim.metrics import psnr

    assert float(psnr(predicted[:, 0], frames[:, -1]).mean()) > 20


def test_ema_forgets_the_initial_weights() -> None:
    """The EMA's decay warms up, so a short run's average holds (next to) none of the
    random initial weights: with a fixed 0.999 a third of them would survive 1,000 steps."""
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 100_000) == 0.999
    decays = [ema_decay_at(0.999, step) for step in range(1000)]
    assert all(a <= b for a, b in itertools.pairwise(decays))
    initial_share = float(np.prod(decays))  # weight the initial value keeps after 1,000 steps
    assert initial_share < 1e-6 < 0.999**1000

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.fill_(1.0)  # training moved the weight at once; the EMA must follow
    for step in range(300):
        update_ema(ema, model, ema_decay_at(0.999, step))
    assert float(ema["weight"]) > 0.99


def test_train_command_residual_flag_reaches_the_checkpoint(takecover_data: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "residual"
    assert cli_main(["train", "--data", str(takecover_data), "--out", str(run), "--preset",
                     "tiny", "--residual", "--quiet"]) == 0
    model = WorldModel.load(run)
    assert model.denoiser.cfg.residual
    frames = torch.randint(0, 256, (1, 2, 3, *model.info.frame_size), dtype=torch.uint8)
    state = model.start(frames, torch.zeros(1, 1, dtype=torch.long))
    assert torch.isfinite(model.step(state, torch.zeros(1, dtype=torch.long)).latents).all()


def test_sampler_given_to_a_finished_run_is_saved_without_retraining(
        trained_run: Path, takecover_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = WorldModel.load(run)
    args = ["train", "--data", str(takecover_data), "--out", str(run), "--preset", "tiny",
            "--quiet"]
    assert cli_main([*args, "--sampler", "denoise_steps=5,temperature=1.3"]) == 0
    after = WorldModel.load(run)
    assert (after.sampler.denoise_steps, after.sampler.temperature) == (5, 1.3)
    assert after.config.sampler == after.sampler
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()):
        assert torch.equal(a, b), name  # the same weights: nothing was trained again
    assert _stage_step(run / "dynamics") == _stage_step(trained_run / "dynamics")
    assert cli_main([*args, "--sampler", "steps=5"]) == 2  # a key the sampler does not have
    assert cli_main([*args, "--sampler", "temperature=-1"]) == 2
    assert WorldModel.load(run).sampler == after.sampler  # bad settings change nothing

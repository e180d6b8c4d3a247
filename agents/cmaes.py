"""World Models' controller: a linear policy on the latent, trained with CMA-ES in the dream.

Ha & Schmidhuber (2018) acted with ``action = W @ [z, h] + b`` (the VAE latent and the
LSTM state) and trained ``W, b`` with CMA-ES, a population of 64, each candidate's
fitness the mean return of 16 dream rollouts. Our dynamics model has no recurrent state
to hand over, so the controller sees the latent frame and, with ``frame_stack = 2``, the
previous one (which shows the agent how fireballs move):
``action = argmax(W @ [latent_{t-1}, latent_t] + b)``.

A generation steps every candidate's rollouts in one batched dream
(:class:`envs.dream.DreamVectorEnv` with ``(population + 1) * rollouts`` dreams: row
group 0 is the current CMA-ES mean, scored for the learning curve but not used in the
update). All candidates face the same dream seeds (common random numbers), so their
ranking reflects the policy more than the luck of the draw. A dream keeps running after
its first episode ends, until the generation's longest episode does; only first
episodes count. The exported agent is the final CMA-ES mean, which is less tuned to
lucky rollouts than the best candidate ever seen.

:class:`CMAES` is a small numpy implementation (Hansen's tutorial, 2016): full
covariance up to ``FULL_COVARIANCE_MAX`` parameters (World Models had 867), above that
the diagonal "sep-CMA-ES" of Ros & Hansen (2008), linear in the parameter count.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from agents.portable import Agent, ObservationSpec, PolicySpec, agent_for_world_model, build_layers
from agents.training import EpisodeLog, RunFolder, load_world_model, termination_options
from worldsim.errors import ConfigError
from worldsim.utils import atomic_path

if TYPE_CHECKING:
    from envs.dream import Datasets

FULL_COVARIANCE_MAX = 1000  # parameters; above this the covariance is diagonal


class CMAES:
    """CMA-ES that maximises a fitness (ask / tell).

    Args:
        mean: the initial mean, ``(n,)``.
        sigma: the initial step size.
        population: candidates per generation (lambda).
        seed: seeds the sampling generator.
        covariance: ``"full"``, ``"diagonal"`` or ``"auto"`` (full up to
            :data:`FULL_COVARIANCE_MAX` parameters).
    """

    def __init__(self, mean: np.ndarray, sigma: float, population: int, seed: int = 0,
                 covariance: str = "auto") -> None:
        if population < 2:
            raise ConfigError(f"CMA-ES needs a population of at least 2, got {population}")
        if sigma <= 0:
            raise ConfigError(f"CMA-ES needs sigma > 0, got {sigma}")
        if covariance not in ("auto", "full", "diagonal"):
            raise ConfigError(f"covariance must be auto, full or diagonal, got {covariance!r}")
        n = self.n = int(mean.size)
        self.diagonal = covariance == "diagonal" or (covariance == "auto"
                                                     and n > FULL_COVARIANCE_MAX)
        self.population, self.parents = population, population // 2
        weights = math.log(self.parents + 0.5) - np.log(np.arange(1, self.parents + 1))
        self.weights = weights / weights.sum()
        mueff = self.mueff = 1.0 / float((self.weights**2).sum())
        self.cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        self.cs = (mueff + 2) / (n + mueff + 5)
        c1 = 2 / ((n + 1.3) ** 2 + mueff)
        cmu = 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff)
        if self.diagonal:  # sep-CMA-ES learns n variances, so it can learn them faster
            c1, cmu = c1 * (n + 2) / 3, cmu * (n + 2) / 3
        self.c1 = min(c1, 1.0)
        self.cmu = min(cmu, 1 - self.c1)
        self.damps = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + self.cs
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
        self.mean = mean.astype(np.float64).copy()
        self.sigma = float(sigma)
        self.ps, self.pc = np.zeros(n), np.zeros(n)
        # diagonal: C is its diagonal (n,); full: C (n, n) = B diag(D^2) B^T
        self.C = np.ones(n) if self.diagonal else np.eye(n)
        self.B, self.D = (None, None) if self.diagonal else (np.eye(n), np.ones(n))
        self.generation = 0
        self.eigen_generation = 0
        self.rng = np.random.default_rng(seed)

    def ask(self) -> np.ndarray:
        """``(population, n)`` candidates drawn from N(mean, sigma^2 C)."""
        z = self.rng.standard_normal((self.population, self.n))
        if self.diagonal:
            y = z * np.sqrt(self.C)
        else:
            y = (z * self.D) @ self.B.T  # B diag(D) z, row-wise
        return self.mean + self.sigma * y

    def tell(self, candidates: np.ndarray, fitness: np.ndarray) -> None:
        """Update from candidates ``(population, n)`` and their fitness ``(population,)``
        (higher is better)."""
        order = np.argsort(-np.asarray(fitness, dtype=np.float64), kind="stable")
        y = (candidates[order[:self.parents]] - self.mean) / self.sigma  # (mu, n)
        y_w = self.weights @ y
        self.mean = self.mean + self.sigma * y_w
        if self.diagonal:
            whitened = y_w / np.sqrt(self.C)
        else:
            whitened = self.B @ ((self.B.T @ y_w) / self.D)
        cs, cc, c1, cmu = self.cs, self.cc, self.c1, self.cmu
        self.ps = (1 - cs) * self.ps + math.sqrt(cs * (2 - cs) * self.mueff) * whitened
        norm_ps = float(np.linalg.norm(self.ps))
        hsig = norm_ps / math.sqrt(1 - (1 - cs) ** (2 * (self.generation + 1))) / self.chi_n \
            < 1.4 + 2 / (self.n + 1)
        self.pc = (1 - cc) * self.pc + hsig * math.sqrt(cc * (2 - cc) * self.mueff) * y_w
        decay = 1 - c1 - cmu + (1 - hsig) * c1 * cc * (2 - cc)
        if self.diagonal:
            self.C = decay * self.C + c1 * self.pc**2 + cmu * (self.weights @ y**2)
        else:
            self.C = (decay * self.C + c1 * np.outer(self.pc, self.pc)
                      + cmu * (y.T * self.weights) @ y)
        self.sigma *= math.exp((cs / self.damps) * (norm_ps / self.chi_n - 1))
        self.generation += 1
        if not self.diagonal and (self.generation - self.eigen_generation
                                  > self.population / (c1 + cmu) / self.n / 10):
            self._decompose()

    def _decompose(self) -> None:
        self.eigen_generation = self.generation
        self.C = np.triu(self.C) + np.triu(self.C, 1).T  # keep it exactly symmetric
        eigenvalues, self.B = np.linalg.eigh(self.C)
        self.D = np.sqrt(np.maximum(eigenvalues, 1e-20))

    # ---- resumable state ---------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON facts that restore this optimiser exactly."""
        arrays = {"mean": self.mean, "ps": self.ps, "pc": self.pc, "C": self.C}
        if not self.diagonal:
            arrays.update(B=self.B, D=self.D)
        facts = {"sigma": self.sigma, "generation": self.generation,
                 "eigen_generation": self.eigen_generation, "diagonal": self.diagonal,
                 "population": self.population, "rng": self.rng.bit_generator.state}
        return arrays, facts

    def restore(self, arrays: dict[str, np.ndarray], facts: dict[str, Any]) -> None:
        if facts["diagonal"] != self.diagonal or facts["population"] != self.population \
                or arrays["mean"].shape != self.mean.shape:
            raise ConfigError("the saved CMA-ES state does not fit these settings")
        self.mean, self.ps, self.pc, self.C = (arrays[k].copy() for k in ("mean", "ps", "pc", "C"))
        if not self.diagonal:
            self.B, self.D = arrays["B"].copy(), arrays["D"].copy()
        self.sigma = float(facts["sigma"])
        self.generation = int(facts["generation"])
        self.eigen_generation = int(facts["eigen_generation"])
        self.rng.bit_generator.state = facts["rng"]


# ---- the linear controller ------------------------------------------------------------------

class LinearController:
    """``action = argmax(W @ obs + b)`` for a batch of parameter vectors ``[W.flat, b]``."""

    def __init__(self, obs_size: int, num_actions: int) -> None:
        self.obs_size, self.num_actions = obs_size, num_actions

    @property
    def num_params(self) -> int:
        return self.num_actions * (self.obs_size + 1)

    def unpack(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(P, n)`` -> W ``(P, A, K*D)`` and b ``(P, A)``, float32."""
        split = self.num_actions * self.obs_size
        weights = params[:, :split].reshape(-1, self.num_actions, self.obs_size)
        return weights.astype(np.float32), params[:, split:].astype(np.float32)

    def network(self, params: np.ndarray) -> torch.nn.Sequential:
        """One parameter vector as a portable network (one Linear layer)."""
        specs = [{"type": "linear", "in": self.obs_size, "out": self.num_actions, "bias": True}]
        network = build_layers(specs)
        weights, bias = self.unpack(params[None])
        with torch.no_grad():
            network[0].weight.copy_(torch.from_numpy(weights[0]))
            network[0].bias.copy_(torch.from_numpy(bias[0]))
        return network


def dream_fitness(venv: Any, controller: LinearController, params: np.ndarray, rollouts: int,
                  seeds: list[int], frame_stack: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Play each candidate's first dream episodes, all in one batch.

    Args:
        venv: a latent-observation ``DreamVectorEnv`` with ``len(params) * rollouts`` dreams.
        controller: the controller's shapes.
        params: ``(P, n)`` candidates; row ``p * rollouts + r`` plays candidate ``p``.
        rollouts: episodes per candidate.
        seeds: one dream seed per rollout, shared by all candidates.
        frame_stack: K latents per observation, oldest first, zeros before the first.

    Returns:
        Returns ``(P, rollouts)``, episode lengths ``(P, rollouts)`` and the dream steps
        taken (rows times the longest episode).
    """
    rows = params.shape[0] * rollouts
    if venv.num_envs != rows:
        raise ConfigError(f"the dream batch has {venv.num_envs} dreams; {params.shape[0]} "
                          f"candidates x {rollouts} rollouts need {rows}")
    weights, bias = controller.unpack(params)
    candidate = np.arange(rows) // rollouts
    observations, _ = venv.reset(seed=[seeds[row % rollouts] for row in range(rows)])
    size = observations.shape[1]
    history = np.zeros((rows, frame_stack * size), dtype=np.float32)
    history[:, -size:] = observations
    returns, lengths = np.zeros(rows), np.zeros(rows, dtype=np.int64)
    alive = np.ones(rows, dtype=bool)
    steps = 0
    while alive.any():
        scores = np.einsum("rad,rd->ra", weights[candidate], history) + bias[candidate]
        observations, rewards, terminated, truncated, _ = venv.step(scores.argmax(axis=1))
        steps += rows
        returns[alive] += rewards[alive]
        lengths[alive] += 1
        alive &= ~(terminated | truncated)
        history = np.roll(history, -size, axis=1)
        history[:, -size:] = observations
    shape = (params.shape[0], rollouts)
    return returns.reshape(shape), lengths.reshape(shape), steps


# ---- training ------------------------------------------------------------------------------

def train_cmaes(
    checkpoint: str | Path,
    out: str | Path,
    total_steps: int,
    population: int = 32,
    rollouts: int = 4,
    sigma: float = 0.1,
    frame_stack: int = 2,
    temperature: float | None = None,
    denoise_steps: int | None = None,
    dataset: Datasets = None,
    max_episode_steps: int | None = None,
    covariance: str = "auto",
    seed: int = 0,
    precision: str = "fp32",
    device: str = "auto",
    compile: bool = False,
    termination_threshold: float | None = None,
    sampler: dict[str, Any] | None = None,
    ends: str = "auto",
    progress: bool = True,
) -> Path:
    """Train World Models' linear controller with CMA-ES in the dream; export the agent.

    Args:
        checkpoint: the world model (run folder, model.safetensors or shipped name).
        out: run folder (created, or resumed when it holds the same run).
        total_steps: dream steps to spend (all dreams of the batch count, also the ones
            waiting for the generation's longest episode); at least one generation runs.
        population: candidates per generation.
        rollouts: dream episodes per candidate; fitness is their mean return.
        sigma: initial CMA-ES step size.
        frame_stack: latent frames the controller sees (2: the previous and the current).
        temperature: dream sampling temperature (default: the checkpoint's).
        denoise_steps: dream denoising steps per frame (default: the checkpoint's).
        dataset: recorded play to prompt dreams from, one folder or several (default: the
            checkpoint's clips).
        max_episode_steps: dream episode cap (default: the real game's).
        covariance: ``"auto"``, ``"full"`` or ``"diagonal"`` (see :class:`CMAES`).
        seed: seeds CMA-ES and the dreams.
        precision: dream precision, ``"fp32"`` or ``"bf16"``.
        device: where the dream runs.
        compile: compile the world model's blocks (``WorldModel.compile_blocks``): faster
            dream steps after a compile of about a minute.
        termination_threshold: end a dream where the termination head's probability
            reaches this (default: sample each step's end from it, as the dream env does).
        sampler: other dream sampler settings over the checkpoint's, e.g.
            ``{"denoise_steps": 16, "sigma_max": 20.0}``.
        ends: which head ends dreams: ``"auto"`` (the foresight head if the model has
            one), ``"frame"`` or ``"foresight"``.
        progress: show a progress bar.

    Returns:
        The portable agent file, ``out/agent.safetensors``.
    """
    from tqdm import tqdm

    from envs.dream import DreamVectorEnv, dataset_setting, dream_sampler

    if total_steps < 1 or rollouts < 1 or frame_stack < 1:
        raise ConfigError("total_steps, rollouts and frame_stack must all be >= 1")
    run = RunFolder(out)
    model, world = load_world_model(checkpoint, device, compile)
    # dream options it cannot use are refused before the run folder is made
    dream_sampler(model.sampler, temperature, denoise_steps, sampler)
    settings = {"algo": "CMA-ES", "world_model": world["sha256"], "population": population,
                "rollouts": rollouts, "sigma": sigma, "frame_stack": frame_stack,
                "temperature": temperature, "denoise_steps": denoise_steps,
                "max_episode_steps": max_episode_steps, "covariance": covariance,
                "seed": seed, "dataset": dataset_setting(dataset)}
    if termination_threshold is not None:  # absent otherwise: older runs still resume
        settings["termination_threshold"] = termination_threshold
    if sampler:  # absent otherwise, as above
        settings["sampler"] = sampler
    ends = model.resolve_ends(ends)
    if model.has_foresight or model.hold_steps:  # as above: older runs still resume
        settings["ends"] = ends
    record = run.start(settings, total_steps)
    if record["finished"] and run.agent_file.is_file():
        return run.agent_file

    venv = DreamVectorEnv(model=model, num_envs=(population + 1) * rollouts, obs_mode="latent",
                          temperature=temperature, denoise_steps=denoise_steps,
                          sampler=sampler, dataset=dataset, precision=precision,
                          max_episode_steps=max_episode_steps,
                          **termination_options(termination_threshold, ends))
    controller = LinearController(frame_stack * int(np.prod(venv.latent_shape)),
                                  model.num_actions)
    es = CMAES(np.zeros(controller.num_params), sigma, population, seed, covariance)
    state_file = run.resume / "cmaes_state.safetensors"
    done = int(record["steps_done"])
    saved: dict[str, Any] = {}
    if done and state_file.is_file():
        with open(state_file.with_suffix(".json")) as handle:
            saved = json.load(handle)
        es.restore(load_file(str(state_file)), saved)
        done = int(saved["steps_done"])  # the state is the truth, the record may lag it
    else:
        done = 0
    from torch.utils.tensorboard import SummaryWriter

    # a resumed run drops any figures logged after its saved state (steps past `done`)
    writer = SummaryWriter(str(run.tensorboard), purge_step=done + 1 if done else None)
    log = EpisodeLog(run.episodes_file, done)
    generations_file = run.root / "generations.csv"
    observation = ObservationSpec(kind="latent", frame_stack=frame_stack)
    facts = {"algo": "CMA-ES", "world_model": world, "population": population,
             "rollouts": rollouts, "sigma0": sigma, "frame_stack": frame_stack,
             "temperature": temperature, "denoise_steps": denoise_steps, "seed": seed,
             "covariance": "diagonal" if es.diagonal else "full",
             "num_params": controller.num_params, "termination_threshold": termination_threshold,
             "sampler": sampler or {}, "ends": ends}
    wall_before = float(record.get("wall_seconds", 0.0))
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=min(done, total_steps), unit="step",
               desc="train CMA-ES in the dream", disable=not progress, dynamic_ncols=True)
    mean_return = float(saved.get("mean_controller_return", float("nan")))

    def publish() -> None:
        """Export the CMA-ES mean as the agent and record the run's progress."""
        wall = round(wall_before + time.perf_counter() - started, 1)
        trained = {**facts, "generations": es.generation, "dream_steps": done,
                   "wall_seconds": wall, "mean_controller_return": mean_return,
                   "final_sigma": es.sigma}
        export_controller(model, controller, es.mean, observation, trained).save(run.agent_file)
        run.update(record, steps_done=done, wall_seconds=wall, generations=es.generation,
                   mean_controller_return=mean_return, finished=done >= total_steps)

    try:
        while done < total_steps or es.generation == 0:
            candidates = es.ask()
            params = np.concatenate([es.mean[None], candidates])  # row group 0: the mean
            first_seed = seed * 1_000_003 + es.generation * rollouts
            seeds = [first_seed + r for r in range(rollouts)]
            returns, lengths, steps = dream_fitness(venv, controller, params, rollouts, seeds,
                                                    frame_stack)
            fitness = returns[1:].mean(axis=1)
            mean_return = float(returns[0].mean())
            es.tell(candidates, fitness)
            done += steps
            log.add([(done, float(r), int(n)) for r, n in zip(returns[0], lengths[0])])
            _log_generation(writer, generations_file, es, done, fitness, mean_return, lengths)
            _save_state(es, state_file, done, mean_return)
            publish()
            bar.update(min(done, total_steps) - bar.n)
            bar.set_postfix(gen=es.generation, dream_return=f"{mean_return:.1f}",
                            best=f"{fitness.max():.1f}", refresh=False)
    finally:
        bar.close()
        writer.close()
        venv.close()
    publish()  # also when a resumed run found its budget already spent
    return run.agent_file


def export_controller(model: Any, controller: LinearController, params: np.ndarray,
                      observation: ObservationSpec, trained: dict[str, Any]) -> Agent:
    """A parameter vector as a portable agent."""
    network = controller.network(params)
    policy = PolicySpec(algo="CMA-ES", layers=[{"type": "linear", "in": controller.obs_size,
                                                 "out": controller.num_actions, "bias": True}])
    return agent_for_world_model(model, observation, policy, network, trained,
                                 name=f"cmaes-{(model.info.env.split('/')[-1] or 'dream').lower()}")


def _save_state(es: CMAES, state_file: Path, steps_done: int, mean_return: float) -> None:
    arrays, facts = es.state()
    facts.update(steps_done=steps_done, mean_controller_return=mean_return)
    with atomic_path(state_file) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    with atomic_path(state_file.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(facts))


def _log_generation(writer: Any, csv_file: Path, es: CMAES, step: int, fitness: np.ndarray,
                    mean_return: float, lengths: np.ndarray) -> None:
    figures = {"dream/mean_controller_return": mean_return,
               "dream/population_return_mean": float(fitness.mean()),
               "dream/population_return_max": float(fitness.max()),
               "dream/episode_length_mean": float(lengths.mean()),
               "cmaes/sigma": es.sigma, "cmaes/generation": es.generation}
    for tag, value in figures.items():
        writer.add_scalar(tag, value, step)
    writer.flush()
    new = not csv_file.is_file()
    with open(csv_file, "a") as handle:
        if new:
            handle.write("generation,step," + ",".join(k.split("/")[-1] for k in figures) + "\n")
        handle.write(f"{es.generation},{step}," + ",".join(f"{v:.6g}" for v in figures.values())
                     + "\n")

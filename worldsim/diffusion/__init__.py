"""The diffusion process around the dynamics network: EDM preconditioning, loss, sampler."""

from worldsim.diffusion.edm import (
    Conditioners,
    Denoiser,
    DenoiserConfig,
    EDMObjective,
    EDMSampler,
)

__all__ = ["Conditioners", "Denoiser", "DenoiserConfig", "EDMObjective", "EDMSampler"]

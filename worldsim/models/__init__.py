"""Networks of the world model: the compression autoencoder, spacetime patches, the dynamics DiT.

Pure torch; the diffusion process that trains and samples the DiT lives in
:mod:`worldsim.diffusion`.
"""

from worldsim.models.autoencoder import (
    AUTOENCODER_PRESETS,
    Autoencoder,
    AutoencoderConfig,
    to_uint8,
)
from worldsim.models.dit import (
    DYNAMICS_PRESETS,
    DynamicsConfig,
    DynamicsModel,
    DynamicsOutput,
    KVCache,
    incoming_from_transitions,
)
from worldsim.models.patches import RotaryEmbedding3D, apply_rope, patchify, unpatchify

__all__ = [
    "AUTOENCODER_PRESETS",
    "Autoencoder",
    "AutoencoderConfig",
    "DYNAMICS_PRESETS",
    "DynamicsConfig",
    "DynamicsModel",
    "DynamicsOutput",
    "KVCache",
    "RotaryEmbedding3D",
    "apply_rope",
    "incoming_from_transitions",
    "patchify",
    "to_uint8",
    "unpatchify",
]

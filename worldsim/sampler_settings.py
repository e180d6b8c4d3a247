"""The dream sampler settings a ``--sampler KEY=VALUE,...`` option may change.

Torch-free, so command-line modules can name the keys in their ``--help`` without importing
torch; :class:`worldsim.diffusion.edm.EDMSampler` holds the settings themselves.
"""

from __future__ import annotations

from typing import Any

from worldsim.errors import ConfigError

SAMPLER_FIELDS: dict[str, type] = {
    "denoise_steps": int, "sigma_min": float, "sigma_max": float, "rho": float, "order": int,
    "s_churn": float, "temperature": float, "action_guidance": float}
"""The :class:`~worldsim.diffusion.edm.EDMSampler` settings ``--sampler`` may change."""


def parse_sampler_settings(text: str) -> dict[str, Any]:
    """``"KEY=VALUE,KEY=VALUE"`` (keys from :data:`SAMPLER_FIELDS`) -> typed settings."""
    settings: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in SAMPLER_FIELDS:
            raise ConfigError(f"sampler setting {item!r}: each is KEY=VALUE with KEY one of "
                              f"{', '.join(SAMPLER_FIELDS)}")
        try:
            settings[key] = SAMPLER_FIELDS[key](value)
        except ValueError:
            raise ConfigError(f"sampler setting {item!r}: {key} needs a number") from None
    return settings


SAMPLER_KEYS = ", ".join(SAMPLER_FIELDS)
"""The keys, for help texts and messages."""

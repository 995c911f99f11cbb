"""The feature decomposing network: config, presets, model and its output.

The config and presets load without torch (the command line lists the presets at start-up);
the networks load on first use.
"""

from fdn.model.config import PRESETS, FDNConfig

_LAZY = {"FDN": "fdn.model.fdn", "FDNOutput": "fdn.model.fdn", "Critic": "fdn.model.critic"}

__all__ = ["FDN", "PRESETS", "Critic", "FDNConfig", "FDNOutput"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fdn.model' has no attribute {name!r}")

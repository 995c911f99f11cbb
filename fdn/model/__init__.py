"""The feature decomposing network: config, presets, model and its output."""

from fdn.model.config import PRESETS, FDNConfig
from fdn.model.critic import Critic
from fdn.model.fdn import FDN, FDNOutput

__all__ = ["FDN", "PRESETS", "Critic", "FDNConfig", "FDNOutput"]

"""Feature decomposing network: data, model, training and encoding."""

__version__ = "0.1.0"

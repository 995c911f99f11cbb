"""Feature decomposing network: data, model, training, encoding, and the archive index.

The names most users need are importable from here; they load lazily, so that `import fdn`
(and the command line's start-up) does not pay for torch until a model is used:

    import fdn
    index = fdn.open_index("demo/index")
    model, config = fdn.load_model("models/cpu-64")
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Archive": "fdn.data",
    "synthesize_archive": "fdn.synth",
    "FDN": "fdn.model",
    "FDNConfig": "fdn.model",
    "PRESETS": "fdn.model",
    "load_model": "fdn.training.checkpoint",
    "encode_images": "fdn.archive_index.encode",
    "build_index": "fdn.archive_index.build",
    "open_index": "fdn.archive_index.retrieval",
    "resolve_device": "fdn.device",
    "open_sharded": "fdn.archive_index.shards",
    "run_slice_query": "fdn.archive_index.queries",
    "run_external_query": "fdn.archive_index.queries",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fdn' has no attribute {name!r}")

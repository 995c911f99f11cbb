"""The trained models that ship with fdn-index, and `--model` values that name one.

The repository's `models/` folder is the source of truth; it installs as the package
`fdn_index_models` (setup.py maps the name onto the folder), so a wheel, an editable install and
the tests read the same files, found through `importlib.resources`, never through the working
directory. A shipped model is a model directory like any other (config.json, weights.pt,
metrics.jsonl, TRAIN_COMMAND.txt); `--model NAME` is a shortcut for its path.

No torch here: `fdn-index models` reads the folders' text files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdn.errors import ModelError

PACKAGE = "fdn_index_models"
# The model `build` and `evaluate-model` use when --model is not given (models/README.md).
DEFAULT_MODEL = "cpu-64-null"
# What a shipped model folder holds; weights.pt decides the codes, the rest describes them.
MODEL_FILES = ("config.json", "weights.pt", "metrics.jsonl", "TRAIN_COMMAND.txt")
# The line of TRAIN_COMMAND.txt, after the training commands, that gives the training archive.
ARCHIVE_PREFIX = "# archive: "


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: where it is and what it was trained on and for how long."""

    name: str
    path: Path
    default: bool
    preset: str | None
    image_size: int | None
    latent_size: int | None
    code_dim: int | None
    codebook_size: int | None
    distribution_matching: bool | None
    null_code: bool
    train_archive: str | None  # the command that made the training archive
    train_commands: list[str]  # `fdn-index train ...`, the run and its --resume continuations
    versions: str | None  # library versions and date of the last training command
    steps: int | None
    epochs: int | None
    train_minutes: float | None
    train_dice_lesion: float | None  # lesion Dice on the last training epoch's batches

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def models_root() -> Path:
    """The folder of the shipped models (the installed `fdn_index_models`, the repo's models/)."""
    import importlib.resources  # here: the command line's start-up would pay for it

    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ModelError(
            f"the package {PACKAGE} (the shipped models) is not installed; "
            "reinstall fdn-index (pip install fdn-index, or make install in a checkout)"
        ) from None
    path = Path(str(root))
    if not path.is_dir():  # e.g. imported from a zip file: a model must be a real folder
        raise ModelError(
            f"the shipped models are at {root}, not in a folder on disk; "
            "install fdn-index as a wheel (pip install), not as a zip"
        )
    return path


def shipped_model_names() -> list[str]:
    """The names of the shipped models, sorted (folders of models_root() with weights.pt)."""
    root = models_root()
    return sorted(p.name for p in root.iterdir() if (p / "weights.pt").is_file())


def shipped_model_path(name: str) -> Path:
    """The folder of the shipped model `name`; ModelError listing the shipped ones otherwise."""
    names = shipped_model_names()
    if name not in names:
        raise ModelError(
            f"no shipped model {name!r}; the shipped models are {', '.join(names)} "
            "(fdn-index models lists them)"
        )
    return models_root() / name


def resolve_model_dir(value: str | Path) -> Path:
    """A `--model` value as a model directory: an existing folder as it is, else the name of a
    shipped model. ModelError naming both readings when it is neither."""
    path = Path(value)
    if path.is_dir():
        return path
    names = shipped_model_names()
    if str(value) in names:
        return models_root() / str(value)
    raise ModelError(
        f"model {value}: not a directory, and not a shipped model ({', '.join(names)}); "
        "pass a folder written by `fdn-index train`, or a name from `fdn-index models`"
    )


def describe(name: str) -> ShippedModel:
    """What `fdn-index models` shows of one shipped model, read from its text files."""
    path = shipped_model_path(name)
    config = _read_json(path / "config.json")
    last = _last_metrics(path / "metrics.jsonl")
    commands, versions, archive = _train_commands(path / "TRAIN_COMMAND.txt")
    time_s = last.get("time_s")
    return ShippedModel(
        name=name,
        path=path,
        default=name == DEFAULT_MODEL,
        preset=config.get("preset"),
        image_size=config.get("image_size"),
        latent_size=config.get("latent_size"),
        code_dim=config.get("code_dim"),
        codebook_size=config.get("codebook_size"),
        distribution_matching=config.get("distribution_matching"),
        null_code=bool(config.get("null_code_weight")),
        train_archive=archive,
        train_commands=commands,
        versions=versions,
        steps=last.get("step"),
        epochs=last.get("epoch"),
        train_minutes=None if time_s is None else round(time_s / 60, 1),
        train_dice_lesion=last.get("dice_lesion"),
    )


def shipped_models() -> list[ShippedModel]:
    """Every shipped model, described; the default one is marked."""
    return [describe(name) for name in shipped_model_names()]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON model config ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _last_metrics(path: Path) -> dict[str, Any]:
    """The last line of metrics.jsonl (the last epoch trained), {} when there is none."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        last = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}
    return last if isinstance(last, dict) else {}


def _train_commands(path: Path) -> tuple[list[str], str | None, str | None]:
    """(train commands, versions line of the last one, training archive's command) of
    TRAIN_COMMAND.txt: command lines, each followed by `# fdn-index …, torch …` and, last,
    `# archive: fdn-index synth …`."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return [], None, None
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    comments = [line for line in lines if line.startswith("#")]
    archive = next(
        (c.removeprefix(ARCHIVE_PREFIX) for c in comments if c.startswith(ARCHIVE_PREFIX)), None
    )
    versions = [c.removeprefix("# ") for c in comments if not c.startswith(ARCHIVE_PREFIX)]
    return commands, versions[-1] if versions else None, archive


def is_shipped(path: str | Path) -> bool:
    """Whether `path` is inside the shipped models' folder (which nothing may write to)."""
    try:
        root = models_root().resolve()
    except ModelError:
        return False
    return Path(path).resolve().is_relative_to(root)

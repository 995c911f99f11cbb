"""Training slices, the half-healthy/half-diseased batch sampler, and augmentation.

Slices are taken from an archive (`fdn.data.Archive`) at the model's input size. Slices
without any brain voxel are dropped: they carry no anatomy and would only teach the decoder
to draw the background. A slice is *diseased* when its label has any lesion voxel and
*healthy* otherwise (Section 3.1.4, as the paper splits them); a case without a `_seg` file
is taken as lesion-free. Images are kept in memory as float16 (half the memory of float32,
far below the z-scored intensities' noise) and turned into float32 per batch.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fdn.errors import ArchiveError

log = logging.getLogger(__name__)


@dataclass
class SliceSet:
    """In-memory training slices.

    images: (N, C, S, S) float16; targets: (N, S, S) uint8 classes {0 bg, 1 NET, 2 ED, 3 ET};
    cases: (N,) case id of each slice; slice_index: (N,) its axial index in the volume.
    """

    images: torch.Tensor
    targets: torch.Tensor
    cases: np.ndarray
    slice_index: np.ndarray

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.targets.shape[0] != n or len(self.cases) != n or len(self.slice_index) != n:
            raise ValueError("SliceSet: images, targets, cases and slice_index differ in length")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def diseased(self) -> torch.Tensor:
        """(N,) bool: the slice has a lesion label."""
        return self.targets.flatten(1).amax(1) > 0

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """index: (B,) -> images (B, C, S, S) float32, targets (B, S, S) int64."""
        return self.images[index].float(), self.targets[index].long()


def load_slices(archive_root: str | Path, size: int, skip_bad: bool = False) -> SliceSet:
    """Read every volume of an archive at `size`² and keep the slices that contain brain."""
    from fdn.data import Archive, seg_to_classes

    archive = Archive(archive_root)
    images, targets, cases, index = [], [], [], []
    for vol in archive.iter_volumes(size, skip_bad=skip_bad):
        keep = np.flatnonzero(vol.brain.reshape(vol.brain.shape[0], -1).any(1))
        if keep.size == 0:
            log.warning("case %s has no brain voxel at all; skipped", vol.case)
            continue
        images.append(torch.from_numpy(np.ascontiguousarray(vol.image[keep])).half())
        if vol.seg is None:
            t = np.zeros((keep.size, size, size), np.uint8)
        else:
            t = seg_to_classes(vol.seg[keep]).astype(np.uint8)
        targets.append(torch.from_numpy(t))
        cases += [vol.case] * keep.size
        index.append(keep)
    if not images:
        raise ArchiveError(
            f"{archive_root}: no slice with brain found; is this a BraTS-layout "
            "archive (one folder per case with _t1/_t1ce/_t2/_flair)?"
        )
    return SliceSet(torch.cat(images), torch.cat(targets), np.array(cases), np.concatenate(index))


class HalfHalfSampler:
    """Batches of B slices: the first B // 2 healthy, the rest diseased (Algorithm 1).

    An epoch has len(slices) // B steps. Batch `step` of epoch `epoch` depends only on
    (seed, epoch, step): each epoch draws one permutation of each group from its own seed and
    walks through it cyclically, so a resumed run draws exactly the batches it would have.
    """

    def __init__(self, diseased: torch.Tensor, batch_size: int, seed: int):
        self.healthy_idx = torch.nonzero(~diseased).flatten()
        self.diseased_idx = torch.nonzero(diseased).flatten()
        if len(self.healthy_idx) == 0 or len(self.diseased_idx) == 0:
            raise ArchiveError(
                f"training needs healthy and diseased slices in every batch; found "
                f"{len(self.healthy_idx)} healthy and {len(self.diseased_idx)} diseased "
                "slices (diseased = any voxel of the _seg label > 0). Use an archive with "
                "lesion labels and lesion-free slices."
            )
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = max(1, len(diseased) // batch_size)
        self._cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _perms(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (
                epoch,
                self.healthy_idx[torch.randperm(len(self.healthy_idx), generator=g)],
                self.diseased_idx[torch.randperm(len(self.diseased_idx), generator=g)],
            )
        return self._cache[1], self._cache[2]

    def batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        """(B,) slice indices: healthy first, then diseased."""
        h, d = self._perms(epoch)
        n_h = self.batch_size // 2
        n_d = self.batch_size - n_h
        pick_h = h[(torch.arange(n_h) + step * n_h) % len(h)]
        pick_d = d[(torch.arange(n_d) + step * n_d) % len(d)]
        return torch.cat([pick_h, pick_d])


def augment(
    images: torch.Tensor, targets: torch.Tensor, max_degrees: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation in ±max_degrees and random horizontal flip, the same for image and label.

    images: (B, C, S, S) float32 (bilinear, edge values outside), targets: (B, S, S) int64
    (nearest, background outside). Random numbers come from `generator` (CPU) so a resumed
    run repeats them.
    """
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_degrees)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = F.grid_sample(
        targets[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out, lab[:, 0].round().long()

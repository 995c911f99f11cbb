"""LPS→RAS, slice stacking and resampling, against hand-worked DICOM examples and numpy."""

import numpy as np
import pytest
from pydicom.dataset import Dataset

from fdn.dicom.geometry import (
    LPS_TO_RAS,
    GeometryError,
    resample,
    slice_header,
    stack_slices,
    volume_from_slices,
)


def header(position, orientation=(1, 0, 0, 0, 1, 0), spacing=(2.0, 3.0), shape=(4, 5)):
    ds = Dataset()
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = shape
    return slice_header(ds)


def test_axial_stack_affine_follows_the_standard():
    """PS3.3 C.7.6.2.1.1 worked by hand: rows 2 mm apart, columns 3 mm apart, slices 5 mm.

    Voxel (i=column 1, j=row 0, k=0) lies 3 mm along the row direction (+x, patient left)
    from the first pixel at LPS (-10, -20, 30): LPS (-7, -20, 30), which is RAS (7, 20, 30).
    Voxel (0, row 1, 0) lies 2 mm posterior: LPS (-10, -18, 30) = RAS (10, 18, 30).
    """
    headers = [header((-10, -20, 30 + 5 * k)) for k in (2, 0, 1)]  # shuffled on purpose
    stack = stack_slices(headers)
    assert stack.order.tolist() == [1, 2, 0]
    ras = LPS_TO_RAS @ stack.affine_lps
    np.testing.assert_allclose(ras @ [1, 0, 0, 1], [7, 20, 30, 1])
    np.testing.assert_allclose(ras @ [0, 1, 0, 1], [10, 18, 30, 1])
    np.testing.assert_allclose(ras @ [0, 0, 2, 1], [10, 20, 40, 1])


def test_pixels_are_transposed_to_column_row_slice():
    images = [np.arange(20).reshape(4, 5) + 100 * k for k in range(3)]  # (rows, cols)
    stack = stack_slices([header((0, 0, 5 * k)) for k in range(3)])
    volume = volume_from_slices(images, stack)
    assert volume.shape == (5, 4, 3)
    assert volume[3, 1, 2] == images[2][1, 3]  # (column 3, row 1, slice 2)


def test_slices_sort_along_the_normal_of_an_oblique_plane():
    c, s = np.cos(0.3), np.sin(0.3)
    row, col = np.array([c, s, 0.0]), np.array([0.0, 0.0, -1.0])  # a tilted coronal plane
    normal = np.cross(row, col)
    origin = np.array([5.0, -3.0, 12.0])
    positions = [origin + 4.0 * k * normal for k in (3, 1, 0, 2)]
    stack = stack_slices([header(p, np.r_[row, col]) for p in positions])
    assert stack.order.tolist() == [2, 1, 3, 0]
    np.testing.assert_allclose(stack.affine_lps[:3, 2], 4.0 * normal)
    np.testing.assert_allclose(stack.affine_lps[:3, 3], origin)


@pytest.mark.parametrize(
    "fault, make, message",
    [
        ("missing", lambda: [header((0, 0, z)) for z in (0, 5, 10, 20, 25)], "1 missing slice"),
        ("duplicate", lambda: [header((0, 0, z)) for z in (0, 5, 5, 10)], "duplicate position"),
        (
            "orientation",
            lambda: [header((0, 0, 0)), header((0, 0, 5), (0, 1, 0, 0, 0, -1))],
            "mixed orientation",
        ),
        ("uneven", lambda: [header((0, 0, z)) for z in (0, 5, 10, 17, 22)], "uneven"),
        ("drift", lambda: [header((0, 3 * z, z)) for z in (0, 5, 10)], "normal"),
        ("size", lambda: [header((0, 0, 0)), header((0, 0, 5), shape=(4, 6))], "image sizes"),
    ],
)
def test_bad_stacks_are_refused(fault, make, message):
    with pytest.raises(GeometryError, match=message):
        stack_slices(make())


def test_resampling_reproduces_a_linear_field():
    """Trilinear interpolation is exact for a field linear in world coordinates, so resampling
    samples of f(x) = a·x + b from one grid onto another, rotated and shifted, must give f at
    the new voxel centres (inside the source volume)."""
    a, b = np.array([0.7, -1.3, 2.1]), 5.0
    src_affine = np.diag([2.0, 2.5, 3.0, 1.0])
    src_affine[:3, 3] = [-20, -25, -30]
    shape = (21, 21, 21)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ src_affine[:3, :3].T + src_affine[:3, 3]
    volume = world @ a + b
    angle = np.deg2rad(20)
    ref_affine = np.eye(4)
    ref_affine[:3, :3] = 1.5 * np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    ref_affine[:3, 3] = [-8, -9, -10]
    ref_shape = (12, 12, 12)
    out = resample(volume, src_affine, ref_shape, ref_affine)
    ref_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in ref_shape], indexing="ij"), -1)
    ref_world = ref_ijk @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    expected = ref_world @ a + b
    inside = np.all((ref_world > -19) & (ref_world < 19), axis=-1)
    assert inside.sum() > 1000
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)


def test_resampling_outside_the_source_is_zero():
    volume = np.ones((4, 4, 4), np.float32)
    shifted = np.eye(4)
    shifted[:3, 3] = 100.0
    assert not resample(volume, np.eye(4), (4, 4, 4), shifted).any()

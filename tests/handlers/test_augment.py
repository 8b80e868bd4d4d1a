"""BatchAugmentation: the bundles' flips and affines on whole batches on the device, checked against exact answers."""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import RandAffined, RandFlipd, RandGaussianNoised

from medtransfer.errors import SettingsError
from medtransfer.handlers.augment import AffineSpec, BatchAugmentation, FlipSpec, affine_warp, cpu_transforms

BUNDLE_LIKE = [
    RandFlipd(keys="image", prob=0.5, spatial_axis=1),
    RandAffined(keys="image", prob=0.5, rotate_range=0.17, scale_range=0.1, translate_range=[4, 4],
                padding_mode="border"),  # fmt: skip
    RandGaussianNoised(keys="image", prob=0.5),
]


def test_the_device_takes_flips_and_affines_with_their_own_settings_and_leaves_the_rest_on_the_cpu():
    augmentation = BatchAugmentation(BUNDLE_LIKE, enabled=True)
    assert augmentation.specs == [FlipSpec(0.5, 1), AffineSpec(0.5, 0.17, 0.1, (4.0, 4.0))]
    assert cpu_transforms(BUNDLE_LIKE, on_device=True) == [BUNDLE_LIKE[2]]
    assert cpu_transforms(BUNDLE_LIKE, on_device="false") == BUNDLE_LIKE
    lopsided = RandAffined(keys="image", prob=1.0, rotate_range=[(0.0, 0.3)])  # not ±r: stays on the CPU
    assert cpu_transforms([lopsided], on_device=True) == [lopsided]
    nearest = RandAffined(keys="image", prob=1.0, rotate_range=0.3, mode="nearest")  # the device warps bilinearly
    assert cpu_transforms([nearest], on_device=True) == [nearest]
    with pytest.raises(SettingsError, match="no RandFlipd"):
        BatchAugmentation([BUNDLE_LIKE[2]], enabled=True)


def test_flips_are_exact_and_probability_zero_is_the_identity():
    images = torch.randn(6, 3, 8, 8)
    always = BatchAugmentation([RandFlipd(keys="image", prob=1.0, spatial_axis=1)], enabled=True)
    assert torch.equal(always.augment(images, step=3), images.flip(-1))
    rows = BatchAugmentation([RandFlipd(keys="image", prob=1.0, spatial_axis=0)], enabled=True)
    assert torch.equal(rows.augment(images, step=3), images.flip(-2))
    never = BatchAugmentation([BUNDLE_LIKE[0], RandAffined(keys="image", prob=0.0, rotate_range=0.3)], enabled=True)
    never.specs = [FlipSpec(0.0, 1), AffineSpec(0.0, 0.3, 0.1, (2.0, 2.0))]
    assert torch.equal(never.augment(images, step=3), images)


def test_an_integer_shift_and_a_quarter_turn_match_torch_roll_and_rot90():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    chosen = torch.tensor([True, False])
    shift = AffineSpec(1.0, 0.0, 0.0, (4.0, 4.0))
    uniform = torch.tensor([[0.0, 0.0, 0.5, 0.0], [0.3, 0.3, 0.3, 0.3]])  # 2 pixels along rows for the first image
    moved = affine_warp(images, chosen, shift, uniform)
    # output row i samples input row i + 2 (theta maps output to input coordinates); border rows repeat the edge
    expected = torch.cat([images[0, :, 2:], images[0, :, -1:].expand(-1, 2, -1)], dim=1)
    torch.testing.assert_close(moved[0], expected, atol=1e-4, rtol=0)
    assert torch.equal(moved[1], images[1])  # not chosen: untouched
    turn = AffineSpec(1.0, math.pi / 2, 0.0, (0.0, 0.0))
    rotated = affine_warp(images, torch.tensor([True, True]), turn, torch.tensor([[1.0, 0, 0, 0]] * 2))
    torch.testing.assert_close(rotated, torch.rot90(images, k=1, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_draws_depend_on_seed_and_iteration_only():
    images = torch.randn(16, 3, 12, 12)
    augmentation = BatchAugmentation(BUNDLE_LIKE[:2], enabled=True, seed=5)
    first = augmentation.augment(images, step=7)
    assert torch.equal(first, augmentation.augment(images, step=7))  # a resumed run redraws the same
    assert not torch.equal(first, augmentation.augment(images, step=8))
    assert not torch.equal(first, BatchAugmentation(BUNDLE_LIKE[:2], enabled=True, seed=6).augment(images, step=7))
    changed = (first - images).flatten(1).abs().amax(1) > 1e-6
    assert 0 < changed.sum() < len(images)  # probability 0.5 each: some images augmented, some left alone


def test_the_bundles_switch_it_with_augment_on_device():
    import json

    from medtransfer.bundling import bundles_dir

    for configs in sorted(bundles_dir().glob("*/configs")):
        train = json.loads((configs / "train.json").read_text())
        if configs.parent.name == "lits_segmentation":
            continue  # 3-D patches, augmented on the CPU
        assert train["augment_on_device"] is False
        assert "cpu_transforms(@augment_transforms, @augment_on_device)" in train["train"]["preprocessing"]["transforms"]
        handler = next(h for h in train["train"]["handlers"] if h.get("_target_", "").endswith("BatchAugmentation"))
        assert handler["transforms"] == "@augment_transforms" and handler["enabled"] == "@augment_on_device"

"""Augmentation of whole training batches on the training device, for when the CPU cannot feed a GPU.

A bundle's ``augment_transforms`` run per image in the loader's CPU workers; at 224² and batch 128 a GPU trains faster
than a few cores can warp images. :class:`BatchAugmentation` takes the same random flips and affines from that list
(MONAI ``RandFlipd`` and ``RandAffined``, their probabilities and ranges read from the objects themselves, so the two
paths cannot drift apart) and applies them to the whole batch on the device: one ``torch.flip`` and one
``affine_grid``/``grid_sample`` per batch. Any other random transform stays on the CPU (:func:`cpu_transforms`).
Normalisation commutes with both (a per-channel affine map of intensities, border padding, interpolation weights
summing to one), so augmenting after it on the device is the same augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from medtransfer import distributed
from medtransfer.errors import SettingsError
from medtransfer.settings import as_flag


@dataclass(frozen=True)
class FlipSpec:
    prob: float
    spatial_axis: int  # MONAI's: 0 = rows (H), 1 = columns (W) of a (C, H, W) image


@dataclass(frozen=True)
class AffineSpec:
    prob: float
    rotate: float  # radians, uniform in ±rotate
    scale: float  # factor 1 + uniform in ±scale
    translate: tuple[float, float]  # pixels, uniform in ±translate along (H, W)


def _device_specs(transform) -> FlipSpec | AffineSpec | None:
    """The device form of a MONAI RandFlipd / RandAffined (2-D, border padding, bilinear), else None."""
    from monai.transforms import RandAffined, RandFlipd

    if isinstance(transform, RandFlipd):
        axis = transform.flipper.spatial_axis
        axes = [axis] if isinstance(axis, int) else list(axis or [])
        if len(axes) == 1 and axes[0] in (0, 1):
            return FlipSpec(float(transform.prob), int(axes[0]))
    if isinstance(transform, RandAffined):
        grid = transform.rand_affine.rand_affine_grid
        rotate, scale, translate = (_symmetric(r) for r in (grid.rotate_range, grid.scale_range, grid.translate_range))
        padding = {str(m).lower() for m in (transform.padding_mode or ["border"])}
        interpolation = {str(m).lower() for m in (transform.mode or ["bilinear"])}
        two_d = len(rotate or [0.0]) <= 1 and len(translate or []) <= 2
        plain = padding <= {"border"} and interpolation <= {"bilinear"} and not any(grid.shear_range or [])
        if None not in (rotate, scale, translate) and two_d and plain:
            return AffineSpec(float(transform.prob), (rotate or [0.0])[0], (scale or [0.0])[0],
                              tuple(((translate or []) + [0.0, 0.0])[:2]))  # fmt: skip
    return None


def _symmetric(ranges) -> list[float] | None:
    """MONAI's per-axis ranges (a number r meaning ±r, or a pair (lo, hi)) as half-widths; None if one is lopsided."""
    widths = []
    for value in ranges or []:
        if value is None:
            widths.append(0.0)
        elif isinstance(value, (tuple, list)):
            low, high = (float(v) for v in value)
            if low != -high:
                return None
            widths.append(abs(high))
        else:
            widths.append(abs(float(value)))
    return widths


def cpu_transforms(transforms: Sequence, on_device: bool) -> list:
    """The augmentation the CPU keeps: all of it, or with `on_device` what :class:`BatchAugmentation` cannot take."""
    on_device = as_flag(on_device, "augment_on_device")
    return [t for t in transforms if not (on_device and _device_specs(t) is not None)]


class BatchAugmentation:
    """The flips and affines of `transforms` on whole training batches, on the device, after the loader.

    Attached on ``GET_BATCH_COMPLETED`` (a public Ignite event) it moves the batch's images to the trainer's device
    and augments them there, so the trainer's own ``prepare_batch`` finds them in place; MetaLR's validation batches
    never pass through it. Each iteration draws from its own generator seeded by (seed, rank, iteration), so a resumed
    run augments exactly as the uninterrupted one. With `enabled` false it does nothing (bundles always list it and
    switch it with ``--augment_on_device true``).
    """

    def __init__(self, transforms: Sequence = (), enabled: bool = False, seed: int = 0, key: str = "image") -> None:
        self.enabled = as_flag(enabled, "augment_on_device")
        self.specs = [spec for spec in map(_device_specs, transforms) if spec is not None]
        if self.enabled and not self.specs:
            raise SettingsError(
                "--augment_on_device true, but augment_transforms holds no RandFlipd or 2-D RandAffined (border "
                "padding) that can run on the device; keep --augment_on_device false"
            )
        self.seed, self.key = int(seed), key

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.GET_BATCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        images = torch.as_tensor(batch[self.key]).to(engine.state.device, non_blocking=True)
        batch[self.key] = self.augment(images, engine.state.iteration)

    def augment(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """`images` (N, C, H, W) augmented with the draws of iteration `step`."""
        if images.dim() != 4:
            raise SettingsError(f"--augment_on_device handles 2-D image batches (N, C, H, W), got shape {tuple(images.shape)}")
        generator = torch.Generator(device=images.device)
        generator.manual_seed(distributed.rank_seed(self.seed * 1_000_003, step))
        out = images
        for spec in self.specs:
            draw = torch.rand(len(out), generator=generator, device=out.device)
            chosen = draw < spec.prob
            if isinstance(spec, FlipSpec):
                flipped = out.flip(-1 if spec.spatial_axis == 1 else -2)
                out = torch.where(chosen[:, None, None, None], flipped, out)
            else:
                uniform = torch.rand(len(out), 4, generator=generator, device=out.device) * 2 - 1
                out = affine_warp(out, chosen, spec, uniform)
        return out


def affine_warp(images: torch.Tensor, chosen: torch.Tensor, spec: AffineSpec, uniform: torch.Tensor) -> torch.Tensor:
    """Warp the `chosen` images of a batch: per image, `uniform` (N, 4) in [-1, 1] scales the spec's ranges into a
    rotation, a scale factor and a (row, column) shift in pixels, about the image centre, with border padding."""
    _, _, height, width = images.shape
    if not chosen.any():
        return images
    angle, scale = uniform[:, 0] * spec.rotate, 1 + uniform[:, 1] * spec.scale
    # pixels to affine_grid's normalised coordinates (align_corners=False: the image spans [-1, 1])
    shift_y, shift_x = uniform[:, 2] * spec.translate[0] * 2 / height, uniform[:, 3] * spec.translate[1] * 2 / width
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    subset = images[chosen]
    grid = F.affine_grid(theta[chosen].to(subset.dtype), list(subset.shape), align_corners=False)
    warped = F.grid_sample(subset, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = images.clone()
    out[chosen] = warped
    return out

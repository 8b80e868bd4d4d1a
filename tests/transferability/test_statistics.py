"""Domain gap, diversity, dataset statistics and penultimate-feature extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.transferability.features import extract_features, find_head
from medtransfer.transferability.statistics import (
    dataset_statistics,
    diversity,
    domain_gap,
    frechet_distance,
    gaussian_stats,
)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ---------------------------------------------------------------- domain gap


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.5, 0.0, 0.5])
    var1, var2 = np.array([1.0, 0.25, 4.0, 2.0]), np.array([0.5, 1.0, 1.0, 2.0])
    # W2^2 between N(mu1, diag var1) and N(mu2, diag var2), computed per coordinate.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2), ridge=0.0)
    assert got == pytest.approx(expected, rel=1e-10)
    # The default ridge moves it by O(ridge * F) only.
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, abs=1e-5)


def test_frechet_matches_symmetric_form_for_full_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    r1 = _sym_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(_sym_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2, ridge=0.0) == pytest.approx(expected, rel=1e-8)


def test_domain_gap_on_samples_approaches_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.0, 2.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([1.0, 1.0, 1.5])
    x1 = mu1 + sd1 * rng.normal(size=(40000, 3))
    x2 = mu2 + sd2 * rng.normal(size=(40000, 3))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)  # = 2 + 1 + 1 = 4
    assert domain_gap(x1, x2, normalize=False) == pytest.approx(expected, rel=0.03)


def test_domain_gap_zero_for_identical_sets():
    x = np.random.default_rng(2).normal(size=(300, 16))
    assert domain_gap(x, x) == pytest.approx(0.0, abs=1e-6)
    assert domain_gap(x, x, normalize=False) == pytest.approx(0.0, abs=1e-6)
    assert domain_gap(x, x, method="mean") == 0.0


def test_domain_gap_increases_with_mean_shift():
    rng = np.random.default_rng(3)
    src, noise = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    direction = np.eye(8)[0]
    raw = [domain_gap(src, noise + s * direction, normalize=False) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(raw, raw[1:], strict=False)), raw
    assert raw[-1] == pytest.approx(16.0, rel=0.1)  # the shift dominates: ||mu1 - mu2||^2 ~ 4^2
    normed = [domain_gap(src, noise + s * direction) for s in (0.0, 1.0, 4.0)]
    assert normed[0] < normed[1] < normed[2], normed
    means = [domain_gap(src, noise + s * direction, method="mean") for s in (0.0, 1.0, 4.0)]
    assert means[0] < means[1] < means[2], means


def test_domain_gap_symmetric_and_scale_free():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 6))
    b = rng.normal(size=(150, 6)) * np.array([0.5, 1, 2, 1, 1, 3]) + 1.0
    assert domain_gap(a, b) == pytest.approx(domain_gap(b, a), rel=1e-6)
    assert domain_gap(a, b, normalize=False) == pytest.approx(domain_gap(b, a, normalize=False), rel=1e-6)
    # L2 normalisation per sample: rescaling a whole feature space (or single samples) changes nothing.
    assert domain_gap(10 * a, 0.1 * b) == pytest.approx(domain_gap(a, b), rel=1e-6)
    assert domain_gap(10 * a, 0.1 * b, normalize=False) != pytest.approx(domain_gap(a, b, normalize=False), rel=0.1)


def test_mean_gap_is_distance_of_normalised_means():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [0.0, 5.0]])
    # unit rows: a -> (0.6, 0.8), (1, 0); mean (0.8, 0.4). b -> (0, 1) twice.
    assert domain_gap(a, b, method="mean") == pytest.approx(np.hypot(0.8, 0.6))


def test_domain_gap_rejects_bad_input():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="target_features have 3"):
        domain_gap(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="method"):
        domain_gap(x, x, method="mmd")
    with pytest.raises(ValueError, match="NaN"):
        domain_gap(x, np.full((10, 4), np.nan))


def test_gaussian_stats_normalises_rows():
    mu, cov = gaussian_stats(np.array([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0]]))
    np.testing.assert_allclose(mu, [1 / 3, 2 / 3])
    assert cov.shape == (2, 2)


# ---------------------------------------------------------------- diversity


def test_diversity_hand_computed():
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    # within-class variance 1 per class; total variance ((6^2 + 4^2) * 2) / 4 = 26
    assert diversity(x, [0, 0, 1, 1], normalize=False) == pytest.approx(1 / 26)


def test_diversity_mixed_spread_beats_tight_clusters():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 50)
    mixed = rng.normal(size=(200, 10))  # classes share one wide cloud
    centres = 5.0 * rng.normal(size=(4, 10))
    tight = centres[labels] + 0.05 * rng.normal(size=(200, 10))  # each class a tight, distant cluster
    d_mixed, d_tight = diversity(mixed, labels), diversity(tight, labels)
    assert d_mixed > 0.9
    assert d_tight < 0.05
    assert 0.0 <= d_tight < d_mixed <= 1.0


def test_diversity_invariant_to_scaling():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(120, 7)) + 0.5, rng.integers(0, 3, 120)
    for normalize in (True, False):
        assert diversity(37.0 * x, y, normalize=normalize) == pytest.approx(diversity(x, y, normalize=normalize))


def test_diversity_rejects_bad_labels():
    x = np.random.default_rng(7).normal(size=(6, 3))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        diversity(x, [0, 1, 0])
    with pytest.raises(ValueError, match="integer"):
        diversity(x, [0, 0.5, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="zero variance"):
        diversity(np.ones((4, 3)), [0, 0, 1, 1])


def test_dataset_statistics_combines_g_d_n():
    rng = np.random.default_rng(8)
    src, tgt, y = rng.normal(size=(100, 5)), rng.normal(size=(80, 5)) + 1, rng.integers(0, 2, 80)
    stats = dataset_statistics(src, tgt, y, n_train=1234)
    assert stats == {"G": pytest.approx(domain_gap(src, tgt)), "D": pytest.approx(diversity(tgt, y)), "N": 1234}
    with pytest.raises(ValueError, match="n_train"):
        dataset_statistics(src, tgt, y, n_train=0)


# ---------------------------------------------------------------- feature extraction


def _images(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 1, 0, 2][:n])


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3)


@pytest.mark.parametrize("batches", ["dict", "tuple"])
def test_extract_features_resnet18(batches):
    x, y = _images()
    model = _resnet()
    if batches == "dict":
        loader = DataLoader([{"image": xi, "label": yi} for xi, yi in zip(x, y, strict=True)], batch_size=4)
    else:
        loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model.train()
    running_mean = model.bn1.running_mean.clone()
    feats, labels, logits = extract_features(model, loader)
    assert model.training  # flag restored
    assert torch.equal(model.bn1.running_mean, running_mean)  # ran in eval mode: BN statistics untouched
    assert feats.shape == (6, 512) and feats.dtype == np.float64
    assert logits.shape == (6, 3)
    np.testing.assert_array_equal(labels, y.numpy())
    model.eval()
    with torch.no_grad():
        expected_logits = model(x).double().numpy()
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    w, b = model.fc.weight.detach().double().numpy(), model.fc.bias.detach().double().numpy()
    np.testing.assert_allclose(feats @ w.T + b, logits, rtol=1e-5, atol=1e-5)  # features are the head's input


def test_extract_features_keeps_eval_mode_and_accepts_one_hot_labels():
    x, y = _images(4)
    model = _resnet().eval()
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    _, labels, _ = extract_features(model, DataLoader(TensorDataset(x, one_hot), batch_size=3))
    assert not model.training
    np.testing.assert_array_equal(labels, y.numpy())


def test_find_head_generic():
    model = _resnet()
    assert find_head(model) is model.fc
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    assert find_head(vit) is vit.heads.head
    with pytest.raises(ValueError, match="head="):
        find_head(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_extract_features_rejects_bad_batches():
    model = _resnet()
    with pytest.raises(KeyError, match="label"):
        extract_features(model, [{"image": torch.randn(2, 3, 32, 32)}])
    assert model.training  # restored even when extraction fails
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, [])

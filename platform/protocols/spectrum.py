"""Feature-collapse diagnostic: the normalised eigenvalue spectrum of the covariance of an encoder's features,
its effective rank, and a plot of both.

After DCGLR (Fu et al.), §5.4 "PCT Feature Analysis" and Fig. 5b (specs/dcglr.md §4.8): "We calculate the
covariance matrix C for the output features and examine its eigenvalues [VICReg]. We normalize all the
eigenvalues by dividing them with the largest one and scale logarithmically. The histogram of the log of
normalized eigenvalue is illustrated in Fig. 5(b)." A collapsed encoder has a few eigenvalues near 1 and the
rest orders of magnitude below; a healthy one a smooth spread over many dimensions.

Choices the paper leaves open, made here:

- The features are the encoder's raw output (``Method.embed``), centred but **not** L2-normalised: the paper
  speaks of "the output features" and mentions no normalisation (``l2_normalize=True`` is available).
- The covariance is the unbiased sample covariance (``np.cov(x, rowvar=False)``, divisor ``M - 1``).
- Eigenvalues are divided by the largest (the paper's "normalized"), so the largest is 1, then clipped below at
  :data:`SPECTRUM_FLOOR` (round-off gives tiny negative eigenvalues; with fewer clouds than dimensions, ``M < D``,
  at least ``D - M + 1`` are exactly zero in exact arithmetic). Logarithms are base 10 (:func:`log_spectrum`).
- The single number logged per evaluation is the effective rank (Roy & Vetterli, "The effective rank: a measure
  of effective dimensionality", EUSIPCO 2007): ``exp`` of the Shannon entropy of the eigenvalues normalised to
  sum 1; between 1 (one direction holds all the variance) and ``D`` (isotropic).
"""

from __future__ import annotations

import numpy as np
import torch

from pointtune import distributed as dist
from pointtune.protocols.base import share_from_rank0

__all__ = ["SPECTRUM_FLOOR", "feature_spectrum", "effective_rank", "log_spectrum", "plot_spectrum",
           "shared_feature_spectrum"]

# Smallest normalised eigenvalue kept (log10 = -12): below float64 round-off relative to the largest.
SPECTRUM_FLOOR = 1e-12


def feature_spectrum(features: np.ndarray, l2_normalize: bool = False) -> np.ndarray:
    """Eigenvalues of the covariance of ``features``, sorted descending and divided by the largest (DCGLR
    §5.4, Fig. 5b).

    The features are centred (the column means subtracted); the covariance is the sample covariance
    ``Xc^T Xc / (M - 1)``. When ``M < D`` the eigenvalues come from the ``(M, M)`` Gram matrix
    ``Xc Xc^T / (M - 1)`` (same non-zero eigenvalues, cheaper) and the remaining ``D - M`` are zero.

    Args:
        features: ``(M, D)`` features, one row per cloud (any real dtype; computed in float64).
        l2_normalize: scale each row to unit L2 norm before centring (off by default: the paper's figure uses
            the raw output features).

    Returns:
        ``(D,)`` float64, descending, in ``[SPECTRUM_FLOOR, 1]``, the first entry 1: eigenvalue / largest
        eigenvalue (dimensionless), values below :data:`SPECTRUM_FLOOR` (round-off, negative or zero
        eigenvalues) clipped up to it. Features without any variance (all rows identical) give all zeros:
        no direction to normalise by.

    Raises:
        ValueError: ``features`` is not 2-D, has fewer than 2 rows or no column, or holds NaN/inf (one line).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"feature_spectrum: features must be a 2-D (M, D) array, got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"feature_spectrum: a covariance needs at least 2 rows and 1 column, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"feature_spectrum: features of shape {x.shape} hold NaN or inf values")
    if l2_normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    m, d = x.shape
    xc = x - x.mean(0, keepdims=True)
    small = xc @ xc.T if m < d else xc.T @ xc  # (min(M, D),) x 2: same non-zero eigenvalues
    eigs = np.zeros(d, dtype=np.float64)
    eigs[: small.shape[0]] = np.linalg.eigvalsh(small / (m - 1))[::-1]
    top = eigs[0]
    if not top > 0:
        return np.zeros(d, dtype=np.float64)
    return np.clip(eigs / top, SPECTRUM_FLOOR, 1.0)


def effective_rank(eigenvalues: np.ndarray) -> float:
    """Effective rank of a spectrum (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = lambda / sum(lambda)`` and
    ``H(p) = -sum p_i log p_i`` (natural log; ``0 log 0 = 0``).

    Scale-invariant, so the normalised spectrum of :func:`feature_spectrum` gives the same value as the raw
    eigenvalues. It is ``D`` for ``D`` equal eigenvalues, 1 for a single non-zero one, and in between otherwise.

    Args:
        eigenvalues: ``(D,)`` eigenvalues in any order and unit; negative entries (round-off) count as 0.

    Returns:
        The effective rank, a float in ``[1, D]`` (dimensions); 0.0 when every eigenvalue is 0 (no variance).

    Raises:
        ValueError: ``eigenvalues`` is not a non-empty 1-D array, or holds NaN/inf (one line).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"effective_rank: eigenvalues must be a non-empty 1-D array, got shape {lam.shape}")
    if not np.isfinite(lam).all():
        raise ValueError("effective_rank: eigenvalues hold NaN or inf values")
    lam = np.clip(lam, 0.0, None)
    total = lam.sum()
    if not total > 0:
        return 0.0
    p = lam[lam > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def log_spectrum(spectrum: np.ndarray) -> np.ndarray:
    """``log10`` of a normalised spectrum (:func:`feature_spectrum`), entries clipped below at
    :data:`SPECTRUM_FLOOR` first (so zeros give -12, never -inf): the x axis of DCGLR's Fig. 5b histogram.

    Args:
        spectrum: ``(D,)`` eigenvalue / largest eigenvalue.

    Returns:
        ``(D,)`` float64 in ``[-12, 0]`` for a normalised spectrum (decades below the largest eigenvalue).

    Raises:
        ValueError: ``spectrum`` is not a non-empty 1-D array.
    """
    spec = np.asarray(spectrum, dtype=np.float64)
    if spec.ndim != 1 or spec.size == 0:
        raise ValueError(f"log_spectrum: spectrum must be a non-empty 1-D array, got shape {spec.shape}")
    return np.log10(np.clip(spec, SPECTRUM_FLOOR, None))


def plot_spectrum(log_eigs: np.ndarray, path: str, title: str = "") -> None:
    """Save a two-panel PNG of a normalised log-eigenvalue spectrum to ``path`` (DCGLR Fig. 5b).

    Left: ``log10(lambda_i / lambda_max)`` against the eigenvalue index ``i`` (1 = largest); right: the histogram
    of those values, as in the paper's figure. The figure's title gives the effective rank.

    Args:
        log_eigs: ``(D,)`` base-10 logs of the normalised eigenvalues, e.g. :func:`log_spectrum` of
            :func:`feature_spectrum`.
        path: the PNG to write.
        title: the figure's title (default: "feature spectrum").

    Raises:
        ValueError: ``log_eigs`` is not a non-empty 1-D array of finite values.
    """
    values = np.asarray(log_eigs, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"plot_spectrum: log_eigs must be a non-empty 1-D array of finite values, got shape "
                         f"{values.shape}; clip zeros with log_spectrum")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rank = effective_rank(np.power(10.0, values))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(np.arange(1, values.size + 1), values, color="tab:blue", lw=1.2)
    left.set_xlabel("eigenvalue index (descending)")
    left.set_ylabel("log10(eigenvalue / largest)")
    left.set_title("spectrum")
    left.grid(alpha=0.3)
    right.hist(values, bins=min(50, max(10, values.size // 4)), color="tab:blue", alpha=0.8)
    right.set_xlabel("log10(eigenvalue / largest)")
    right.set_ylabel("eigenvalues")
    right.set_title("histogram")
    fig.suptitle(f"{title or 'feature spectrum'} (D = {values.size}, effective rank {rank:.1f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shared_feature_spectrum(features: np.ndarray, device: torch.device) -> tuple[float, np.ndarray]:
    """The normalised spectrum (:func:`feature_spectrum`) and effective rank of ``features``, computed on rank
    0 and handed to every data-parallel worker (:func:`~pointtune.protocols.base.share_from_rank0`), so all
    workers report the same figures as one process. Every worker must call it (a collective when
    ``world > 1``).

    Args:
        features: ``(M, D)`` the gathered features, the same on every worker (``M >= 2``).
        device: where the collective runs.

    Returns:
        ``(effective rank, (D,) spectrum)``; NaN for both when the features hold NaN/inf (no worker raises,
        so none is left waiting in the collective).
    """
    d = features.shape[1]
    values = None
    if dist.rank() == 0:
        if np.isfinite(features).all():
            spectrum = feature_spectrum(features)
            values = np.concatenate([[effective_rank(spectrum)], spectrum])
        else:
            values = np.full(d + 1, np.nan)
    shared = share_from_rank0(values, d + 1, device)
    return float(shared[0]), shared[1:]


"""Separation quality: BSSEval v4 (the results table's ``sdr_<stem>``...) and the global SDR
(training validation's ``median_global_sdr_db``). Two different figures: BSSEval allows each
estimate a 512-tap distortion filter and takes medians over 1 s windows; the global SDR compares
the samples as they are over the whole excerpt.

BSSEval v4 (SiSEC 2018, "bss_eval_images" with time-invariant distortion filters), fast.

Computes the same figures as ``museval.evaluate(references, estimates, win, hop, mode='v4')``
without its per-window recomputation:

1. For every reference channel, the lagged cross-correlations (lags -511..511) with all
   reference and estimate channels over the whole track, in float64, by block FFTs that are
   summed in the frequency domain (one small inverse FFT per pair instead of one per track length).
2. The distortion filters of length ``filters_len``: the Gram matrix of delayed references is
   block Toeplitz in the delay, so a block Levinson recursion solves it in O(L^2 P^3) (P = S*C)
   for all estimates at once (museval's interference filters ``C``), and per source for the
   spatial filters ``Cj``, instead of dense O((L P)^3) solves. Dense LU, as museval uses, is the
   fallback when the recursion meets a singular matrix.
3. Per window, the references of that window (zero outside it, as museval slices them) are
   filtered in the frequency domain; the four energy ratios come from Parseval's theorem, so no
   projection is ever brought back to the time domain.

A window where any reference or any estimate is silent (the sum over channels is zero at every
sample) gets NaN for all sources and metrics, like museval. ``median_metrics`` ignores NaN and
infinite windows as museval's JSON and its frame aggregation do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.linalg

METRICS = ("sdr", "isr", "sir", "sar")
FILTERS_LEN = 512
_BLOCK_FFT = 16384  # FFT size of the correlation blocks
_BLOCKS_PER_CHUNK = 32  # correlation blocks transformed at once (memory bound)
_WINDOWS_PER_CHUNK = 8  # evaluation windows transformed at once (memory bound)


def evaluate(
    references: np.ndarray,
    estimates: np.ndarray,
    win: int = 44100,
    hop: int = 44100,
    filters_len: int = FILTERS_LEN,
) -> dict[str, np.ndarray]:
    """BSSEval v4 metrics per source and window, matching ``museval.evaluate(mode='v4')``.

    Args:
      references: (S, N, C) true source images, any float dtype.
      estimates: (S, N', C) estimated source images, same order; padded with zeros or truncated
        to N samples as museval does.
      win: window length, samples (a window >= N means one window over the whole track).
      hop: hop between windows, samples. Only whole windows are evaluated, like museval.
      filters_len: length of the distortion filters, samples.

    Returns:
      {'sdr', 'isr', 'sir', 'sar'} -> (S, n_windows) float64 arrays, dB; NaN on silent windows.

    Raises:
      ValueError: on mismatched shapes or a reference or estimate that is silent over the track.
    """
    references, estimates = _validate(references, estimates)
    n_src, n_samples, n_chan = references.shape
    refs = _channels_first(references)  # (S*C, N): signal p = (source, channel)
    ests = _channels_first(estimates)
    corr = _lagged_correlations(refs, (refs, ests), filters_len - 1)
    n_sig = refs.shape[0]
    c_all, c_own = _distortion_filters(corr[:, :n_sig], corr[:, n_sig:], n_src, filters_len)

    window, starts = _window_starts(n_samples, win, hop)
    result = {m: np.empty((n_src, len(starts))) for m in METRICS}
    n_fft = scipy.fft.next_fast_len(window + filters_len - 1, real=True)
    # Frequency responses stacked as (bins, 2*S*C, S*C): rows (est, out channel) of the
    # interference filters, then of the block-diagonal spatial filters.
    responses = np.concatenate([c_all, c_own], axis=1)
    responses = scipy.fft.rfft(responses, n=n_fft, axis=0)
    for first in range(0, len(starts), _WINDOWS_PER_CHUNK):
        chunk = starts[first : first + _WINDOWS_PER_CHUNK]
        ratios = _window_ratios(refs, ests, chunk, window, n_fft, responses, n_src, n_chan)
        for name, values in zip(METRICS, ratios):
            result[name][:, first : first + len(chunk)] = values
    silent = _silent_windows(references, starts, window) | _silent_windows(
        estimates, starts, window
    )
    for values in result.values():
        values[:, silent] = np.nan
    return result


def median_metrics(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Median over windows per source, as museval aggregates frames.

    Values are rounded to 5 decimals (museval stores them so), infinite values count as NaN
    (museval's JSON writes them as NaN), and NaN windows are skipped; a source with no finite
    window gets NaN.

    Args:
      metrics: name -> (S, n_windows) as returned by ``evaluate``.

    Returns:
      name -> (S,) float64 medians, dB.
    """
    out = {}
    for name, values in metrics.items():
        values = np.round(np.where(np.isfinite(values), values, np.nan), 5)
        medians = np.full(values.shape[0], np.nan)
        for i, row in enumerate(values):
            row = row[~np.isnan(row)]
            if row.size:
                medians[i] = np.median(row)
        out[name] = medians
    return out


def museval_json(
    metrics: dict[str, np.ndarray],
    target_names: Sequence[str],
    win_s: float = 1.0,
    hop_s: float = 1.0,
) -> str:
    """Per-track scores in museval's JSON schema (what ``museval.TrackStore.json`` writes).

    Args:
      metrics: name -> (S, n_windows) as returned by ``evaluate``.
      target_names: S stem names, in the order of ``metrics``' first axis.
      win_s: window duration, seconds.
      hop_s: hop between windows, seconds.

    Returns:
      JSON text ``{"targets": [{"name", "frames": [{"time", "duration", "metrics": {...}}]}]}``;
      values rounded to 5 decimals, infinite and silent windows written as NaN like museval.
    """
    if len(target_names) != metrics["sdr"].shape[0]:
        raise ValueError(
            f"{len(target_names)} target names for {metrics['sdr'].shape[0]} evaluated sources"
        )
    targets = []
    for i, name in enumerate(target_names):
        frames = []
        for t in range(metrics["sdr"].shape[1]):
            values = {}
            for key in ("SDR", "SIR", "SAR", "ISR"):
                value = float(metrics[key.lower()][i, t])
                values[key] = round(value, 5) if math.isfinite(value) else math.nan
            frames.append({"time": t * hop_s, "duration": win_s, "metrics": values})
        targets.append({"name": name, "frames": frames})
    return json.dumps({"targets": targets}, indent=2, allow_nan=True)


def _validate(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checks shapes and silence like museval; pads or truncates estimates to N samples."""
    references = np.asarray(references)
    estimates = np.asarray(estimates)
    if references.ndim != 3 or estimates.ndim != 3:
        raise ValueError(
            f"references and estimates must be (sources, samples, channels); got "
            f"{references.shape} and {estimates.shape}"
        )
    if (references.shape[0], references.shape[2]) != (estimates.shape[0], estimates.shape[2]):
        raise ValueError(
            f"references {references.shape} and estimates {estimates.shape} differ in sources "
            "or channels"
        )
    n_samples = references.shape[1]
    if estimates.shape[1] > n_samples:
        estimates = estimates[:, :n_samples]
    elif estimates.shape[1] < n_samples:
        estimates = np.pad(estimates, [(0, 0), (0, n_samples - estimates.shape[1]), (0, 0)])
    for label, sources in (("reference", references), ("estimated", estimates)):
        silent = np.flatnonzero(np.all(sources.sum(axis=2) == 0, axis=1))
        if silent.size:
            raise ValueError(
                f"{label} source(s) {silent.tolist()} are silent over the whole track; BSSEval "
                "is undefined for them"
            )
    return references, estimates


def _channels_first(sources: np.ndarray) -> np.ndarray:
    """(S, N, C) -> (S*C, N) copy in the input dtype; row p = source p // C, channel p % C."""
    n_src, n_samples, n_chan = sources.shape
    return sources.transpose(0, 2, 1).reshape(n_src * n_chan, n_samples)


def _padded_slice(signals: np.ndarray, start: int, stop: int) -> np.ndarray:
    """signals[:, start:stop] as float64, reading zeros outside [0, N)."""
    out = np.zeros((signals.shape[0], stop - start))
    lo, hi = max(start, 0), min(stop, signals.shape[1])
    if hi > lo:
        out[:, lo - start : hi - start] = signals[:, lo:hi]
    return out


def _lagged_correlations(x: np.ndarray, y: Sequence[np.ndarray], max_lag: int) -> np.ndarray:
    """Cross-correlations ``c[p, q, k + max_lag] = sum_n x[p, n] y[q, n + k]``, |k| <= max_lag.

    Block method: x is cut into blocks of B samples, y into the same blocks extended by max_lag
    on both sides; the circular correlation of each pair of blocks at FFT size B + 2*max_lag has
    no wrap-around for these lags, and the block spectra are summed before one inverse FFT.

    Args:
      x: (P, N) signals. y: arrays of (Q_i, N) signals, taken as their concatenation (Q, N).

    Returns:
      (P, Q, 2*max_lag + 1) float64.
    """
    n_fft = max(_BLOCK_FFT, scipy.fft.next_fast_len(8 * max_lag, real=True))
    block = n_fft - 2 * max_lag
    n_blocks = -(-x.shape[1] // block)
    spectra = np.zeros((n_fft // 2 + 1, x.shape[0], sum(a.shape[0] for a in y)), np.complex128)
    for b0 in range(0, n_blocks, _BLOCKS_PER_CHUNK):
        nb = min(_BLOCKS_PER_CHUNK, n_blocks - b0)
        xs = _padded_slice(x, b0 * block, (b0 + nb) * block).reshape(x.shape[0], nb, block)
        ys = np.concatenate(
            [_padded_slice(a, b0 * block - max_lag, (b0 + nb) * block + max_lag) for a in y]
        )
        ys = np.lib.stride_tricks.sliding_window_view(ys, block + 2 * max_lag, axis=1)[:, ::block]
        xf = scipy.fft.rfft(xs, n=n_fft, axis=2)  # (P, nb, bins)
        yf = scipy.fft.rfft(ys, n=n_fft, axis=2)  # (Q, nb, bins)
        spectra += np.matmul(xf.transpose(2, 0, 1).conj(), yf.transpose(2, 1, 0))
    corr = scipy.fft.irfft(spectra, n=n_fft, axis=0)[: 2 * max_lag + 1]
    return np.ascontiguousarray(corr.transpose(1, 2, 0))


def _solve_block_toeplitz(r: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Solves the symmetric positive block-Toeplitz system ``sum_b R(a - b) x[b] = y[a]``.

    Block Levinson recursion (Whittle / Wiggins-Robinson): O(L^2 P^3) instead of the
    O(L^3 P^3) of a dense factorisation. Falls back to a dense LU solve, as museval uses, when
    a prediction-error matrix is singular.

    Args:
      r: (2L-1, P, P) blocks, ``r[k + L - 1] = R(k)`` with ``R(-k) = R(k).T``.
      y: (L, P, M) right-hand sides.

    Returns:
      x: (L, P, M) float64.
    """
    n_lags, n_sig, n_rhs = y.shape
    descending = r[::-1].transpose(1, 0, 2).reshape(n_sig, -1)  # block m = R(L-1-m)
    ascending = r.transpose(1, 0, 2).reshape(n_sig, -1)  # block m = R(m-L+1)
    forward = np.zeros((n_lags, n_sig, n_sig))  # forward predictor A_n, A_n[0] = I
    backward = np.zeros((n_lags, n_sig, n_sig))  # backward predictor B_n, reversed: [0] = I
    forward[0] = backward[0] = np.eye(n_sig)
    x = np.zeros((n_lags, n_sig, n_rhs))
    err_f = r[n_lags - 1].copy()  # prediction-error matrices
    err_b = r[n_lags - 1].copy()
    try:
        x[0] = np.linalg.solve(err_f, y[0])
        for n in range(n_lags - 1):
            cols = slice((n_lags - 2 - n) * n_sig, (n_lags - 1) * n_sig)
            delta = descending[:, cols] @ forward[: n + 1].reshape(-1, n_sig)
            theta = descending[:, cols] @ x[: n + 1].reshape(-1, n_rhs)
            nabla = ascending[:, cols] @ backward[: n + 1].reshape(-1, n_sig)
            k_f = np.linalg.solve(err_b, delta)
            k_b = np.linalg.solve(err_f, nabla)
            step_f = backward[n::-1] @ k_f
            backward[1 : n + 2] -= forward[n::-1] @ k_b
            forward[1 : n + 2] -= step_f
            err_f = err_f - nabla @ k_f
            err_b = err_b - delta @ k_b
            x[: n + 2] += backward[n + 1 :: -1] @ np.linalg.solve(err_b, y[n + 1] - theta)
    except np.linalg.LinAlgError:
        lag = np.arange(n_lags)
        dense = r[lag[:, None] - lag[None, :] + n_lags - 1].transpose(0, 2, 1, 3)
        dense = dense.reshape(n_lags * n_sig, n_lags * n_sig)
        x = scipy.linalg.solve(dense, y.reshape(n_lags * n_sig, n_rhs)).reshape(y.shape)
    return x


def _distortion_filters(
    corr_refs: np.ndarray, corr_ests: np.ndarray, n_src: int, filters_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares filters projecting each estimate on delayed references.

    The Gram matrix of delayed references, ``<delay_a(p), delay_b(q)> = corr_refs[p, q, a-b+L-1]``,
    is block Toeplitz in the delays; the right-hand sides are
    ``<delay_a(p), estimate q> = corr_ests[p, q, a+L-1]``. museval adds eps * I to the Gram
    matrix; so does this.

    Args:
      corr_refs: (P, P, 2L-1) reference/reference correlations, P = S*C.
      corr_ests: (P, P, 2L-1) reference/estimate correlations.

    Returns:
      (c_all, c_own), both (L, P, P) float64 indexed [lag, estimate channel q, reference
      channel p]: c_all projects estimate q on all references (museval's ``C``), c_own only on
      its own source's channels (museval's ``Cj``; zero elsewhere).
    """
    n_sig = corr_refs.shape[0]
    n_chan = n_sig // n_src
    blocks = corr_refs.transpose(2, 0, 1).copy()  # (2L-1, P, P): R(k)
    blocks[filters_len - 1] += np.finfo(float).eps * np.eye(n_sig)
    rhs = corr_ests[:, :, filters_len - 1 :].transpose(2, 0, 1)  # (L, P, Q)
    c_all = _solve_block_toeplitz(blocks, rhs).transpose(0, 2, 1)
    c_own = np.zeros_like(c_all)
    for j in range(n_src):
        chans = slice(j * n_chan, (j + 1) * n_chan)
        own = _solve_block_toeplitz(blocks[:, chans, chans], rhs[:, chans, chans])
        c_own[:, chans, chans] = own.transpose(0, 2, 1)
    return c_all, c_own


def _window_starts(n_samples: int, win: int, hop: int) -> tuple[int, np.ndarray]:
    """museval's framing: whole windows only, or one window of the track if win >= N."""
    if win >= n_samples:
        return n_samples, np.zeros(1, dtype=np.int64)
    n_windows = (n_samples - win + hop) // hop
    return win, np.arange(n_windows, dtype=np.int64) * hop


def _windows(signals: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(P, N) -> (P, len(starts), window) float64 copies of the windows."""
    view = np.lib.stride_tricks.sliding_window_view(signals, window, axis=1)
    return np.asarray(view[:, starts], dtype=np.float64)


def _window_ratios(
    refs: np.ndarray,
    ests: np.ndarray,
    starts: np.ndarray,
    window: int,
    n_fft: int,
    responses: np.ndarray,
    n_src: int,
    n_chan: int,
) -> tuple[np.ndarray, ...]:
    """SDR, ISR, SIR, SAR (each (S, len(starts)), dB) of the windows starting at ``starts``.

    Each window's references are zero outside the window, as museval slices them; filtered,
    they are window + L - 1 samples long, which ``n_fft`` holds without wrap-around.
    """
    ref_f = scipy.fft.rfft(_windows(refs, starts, window), n=n_fft, axis=2)  # (P, W, bins)
    est_f = scipy.fft.rfft(_windows(ests, starts, window), n=n_fft, axis=2)
    proj = np.matmul(responses, ref_f.transpose(2, 0, 1))  # (bins, 2P, W)
    proj = proj.transpose(1, 2, 0)
    n_sig = refs.shape[0]
    p_all, p_own = proj[:n_sig], proj[n_sig:]

    weights = np.full((ref_f.shape[-1], 2), 2.0)  # Parseval for a one-sided spectrum
    weights[0] = 1.0
    if n_fft % 2 == 0:
        weights[-1] = 1.0
    weights = weights.ravel()  # (bins * 2,): real and imaginary parts

    def energy(spec: np.ndarray) -> np.ndarray:
        """(P, W, bins) -> (S, W): energy summed over each source's channels (unnormalised)."""
        parts = np.ascontiguousarray(spec).view(np.float64)
        e = np.square(parts) @ weights
        return e.reshape(n_src, n_chan, -1).sum(axis=1)

    target = energy(ref_f)
    return (
        _db(target, energy(est_f - ref_f)),
        _db(target, energy(p_own - ref_f)),
        _db(energy(p_own), energy(p_all - p_own)),
        _db(energy(p_all), energy(est_f - p_all)),
    )


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10 log10(num / den); +inf where den == 0, as museval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.inf, 10 * np.log10(num / den))


def _silent_windows(sources: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(len(starts),) bool: some source's channel sum is zero over the whole window."""
    nonzero = sources.sum(axis=2) != 0  # (S, N)
    return np.array([not nonzero[:, s : s + window].any(axis=1).all() for s in starts], dtype=bool)


# --- global SDR (training validation; the MDX challenge's figure, not BSSEval) -----------


def global_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Global SDR in dB, ``10 log10(sum s^2 / sum (s - s_hat)^2)`` over all samples and channels
    (the MDX challenge's SDR; no BSSEval filter allowance)."""
    reference = reference.astype(np.float64)
    error = np.sum((reference - estimate) ** 2)
    return float(10.0 * np.log10(np.sum(reference**2) / max(error, 1e-20)))


def median_global_sdr(
    per_track: Sequence[dict[str, float]], stems: Sequence[str]
) -> dict[str, float]:
    """Median over tracks of each stem's global SDR, ignoring tracks where that stem is silent
    (NaN)."""
    return {
        s: float(np.nanmedian([t[s] for t in per_track]))
        if any(np.isfinite(t[s]) for t in per_track)
        else float("nan")
        for s in stems
    }


def stem_global_sdrs(
    references: np.ndarray, estimates: np.ndarray, stems: Sequence[str]
) -> dict[str, float]:
    """Global SDR per stem of (N, C, S) estimates; NaN where the reference is silent."""
    return {
        stem: global_sdr(references[..., s], estimates[..., s])
        if np.any(references[..., s])
        else float("nan")
        for s, stem in enumerate(stems)
    }

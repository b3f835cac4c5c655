"""The demand formula (pure numpy: values in, values out, time as an argument).

For one series of samples ``x_i`` taken at times ``t_i`` inside the window
``now - window_s < t_i <= now`` (missing samples are skipped):

* exponentially weighted mean, time based::

      w_i  = 2 ** (-(now - t_i) / halflife_s)
      ewm  = sum(w_i * x_i) / sum(w_i)

  (equal to pandas ``Series.ewm(halflife=halflife_s, times=t, adjust=True).mean()`` at the last
  sample; the per-sample smoothing factor at a nominal interval ``I`` is
  ``alpha = 1 - 2 ** (-I / halflife_s)``);
* high percentile ``p_q``: the q-th percentile of the ``x_i`` with linear interpolation between
  order statistics (numpy's default "linear" method);
* **demand = max(ewm, p_q)**.

Why this combination: the percentile moves only when more than ``(100 - q)`` percent of the
window's samples are higher (with q = 95 and a 1 h window: more than 3 minutes), so a short spike
leaves it alone and a sustained rise moves it within those minutes; the EWM lets a burst of
length ``d`` through only with weight ``1 - 2 ** (-d / halflife_s)`` (6.7 % for a 1 min spike at a
10 min half-life) and follows a rise that outlasts the half-life. A drop in load shows once fewer
than ``(100 - q)`` percent of the window remain at the old level, which is the hysteresis that
keeps VMs from moving back and forth.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def ewm(values: FloatArray, ages_s: FloatArray, halflife_s: float) -> npt.NDArray[np.float64]:
    """Time-weighted EWM per column of ``values`` (rows = samples; NaN = missing).

    ``ages_s[i]`` is ``now - t_i`` of row ``i``. Columns without a sample give NaN."""
    if values.shape[0] == 0:
        return np.full(values.shape[1], np.nan)
    weights = np.exp2(-np.asarray(ages_s, dtype=np.float64) / halflife_s).astype(values.dtype)
    present = ~np.isnan(values)
    num = weights @ np.where(present, values, 0)
    den = weights @ present.astype(values.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    out[den <= 0] = np.nan
    return out


def percentile(values: FloatArray, q: float) -> npt.NDArray[np.float64]:
    """The q-th percentile (0..100, linear interpolation) per column, skipping NaN.

    Equal to ``np.nanpercentile(values, q, axis=0)`` but vectorised (one sort of the block)."""
    rows, cols = values.shape
    if rows == 0:
        return np.full(cols, np.nan)
    ordered = np.sort(values, axis=0)  # NaN sorts last
    count = (~np.isnan(values)).sum(axis=0)
    pos = (q / 100.0) * np.maximum(count - 1, 0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    frac = pos - lo
    v_lo = np.take_along_axis(ordered, lo[None, :], axis=0)[0].astype(np.float64)
    v_hi = np.take_along_axis(ordered, hi[None, :], axis=0)[0].astype(np.float64)
    out: npt.NDArray[np.float64] = v_lo + (v_hi - v_lo) * frac
    out[count == 0] = np.nan
    return out


def demand(
    values: FloatArray, ages_s: FloatArray, *, halflife_s: float, q: float
) -> npt.NDArray[np.float64]:
    """``max(ewm, p_q)`` per column (see the module docstring); NaN where no sample."""
    out: npt.NDArray[np.float64] = np.fmax(ewm(values, ages_s, halflife_s), percentile(values, q))
    return out

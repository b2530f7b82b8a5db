"""Coloured (power-law) Gaussian noise along the planning horizon, for iCEM.

A sequence whose power spectrum falls as ``1/f**beta`` is white for ``beta = 0`` and increasingly smooth
(low-frequency) as ``beta`` grows; iCEM (Pinneri et al., 2020) samples action sequences with such noise
because smooth sequences explore physical systems better than per-step white noise. The spectrum is drawn
in the frequency domain and transformed back with an inverse real FFT (Timmer & König, 1995), entirely in
torch, so it runs on the planner's device and draws only from the given generator.
"""

from __future__ import annotations

import math

import torch


def coloured_noise(
    num: int,
    horizon: int,
    dim: int,
    *,
    beta: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``num`` independent noise sequences of shape ``[H, A]`` with power spectrum ``∝ 1/f**beta``.

    Every entry is marginally standard normal (the scale is normalized exactly, not estimated), and the
    ``dim`` channels are independent; only the time axis (``H``) is correlated. The DC term takes the
    amplitude of the lowest frequency ``1/H``, so for ``H <= 3`` the spectrum is flat and the noise white.

    :param num: number of sequences N.
    :param horizon: sequence length H (the time axis the spectrum refers to).
    :param dim: number of independent channels A.
    :param beta: spectral exponent; 0 gives white noise, 1 pink, 2 red/brown (smoother as it grows).
    :param generator: source of randomness (must live on ``device``); None uses torch's default.
    :param device: device of the result.
    :param dtype: floating dtype of the result.
    :return: noise of shape ``[N, H, A]``.
    """
    if num < 0 or horizon < 1 or dim < 1:
        raise ValueError(f"expected num >= 0, horizon >= 1, dim >= 1, got ({num}, {horizon}, {dim})")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if beta == 0.0 or horizon == 1:
        # A one-step sequence has no spectrum to shape; white noise is the exact answer for beta = 0.
        return torch.randn(num, horizon, dim, generator=generator, device=device, dtype=dtype)

    freqs = torch.fft.rfftfreq(horizon, device=device, dtype=dtype)  # [F], F = H // 2 + 1
    # 1/f**beta diverges at f = 0; the lowest resolvable frequency stands in for the DC term.
    freqs[0] = 1.0 / horizon
    amplitude = freqs.pow(-beta / 2.0)  # [F]: power ∝ amplitude² ∝ f^-beta

    # The DC term (and the Nyquist term for even H) of a real signal's spectrum is real; its real part
    # gets the variance the real and imaginary parts would have shared, which keeps beta = 0 exactly white.
    real_only = torch.zeros_like(freqs, dtype=torch.bool)
    real_only[0] = True
    if horizon % 2 == 0:
        real_only[-1] = True
    real_scale = torch.where(real_only, amplitude * math.sqrt(2.0), amplitude)  # [F]
    imag_scale = torch.where(real_only, torch.zeros_like(amplitude), amplitude)  # [F]

    shape = (num, dim, freqs.shape[0])
    real = torch.randn(shape, generator=generator, device=device, dtype=dtype) * real_scale  # [N,A,F]
    imag = torch.randn(shape, generator=generator, device=device, dtype=dtype) * imag_scale  # [N,A,F]
    signal = torch.fft.irfft(torch.complex(real, imag), n=horizon, dim=-1)  # [N,A,H]

    # irfft's x[t] = (1/H)(X_0 + 2 Σ Re(X_k e^{iωt}) + X_nyq (-1)^t): a real-only bin contributes its
    # variance once, a complex bin four times its per-part variance; the sum is the same for every t.
    per_bin = torch.where(real_only, real_scale.square(), 4.0 * amplitude.square())  # [F]
    std = per_bin.sum().sqrt() / horizon
    return (signal / std).transpose(1, 2).contiguous()  # [N,H,A]

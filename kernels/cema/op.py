from __future__ import annotations

import functools

import torch

from kernels._autograd import recompute_grad
from kernels._dispatch import check, resolve_backend
from kernels.cema.reference import cema_coefficients, cema_reference
from kernels.cema.torch_impl import cema_fft


def _validate(x, alpha, delta, theta, gamma, omega, h0):
    check(x.dim() == 3, f"cema: x must be [B, D, L], got shape {tuple(x.shape)}")
    B, D, L = x.shape
    check(L >= 1, "cema: the sequence is empty (L = 0)")
    check(alpha.dim() == 3 and alpha.shape[0] == D and alpha.shape[2] == 1,
          f"cema: alpha must be [D={D}, N, 1], got {tuple(alpha.shape)}")
    N = alpha.shape[1]
    real = theta is None
    for name, t, shape in (("delta", delta, (D, N, 1)), ("theta", theta, (D, 1, 1)),
                           ("gamma", gamma, (D, N, 1 if real else 2)), ("omega", omega, (D, 1))):
        if t is not None:
            check(tuple(t.shape) == shape, f"cema: {name} must be {list(shape)}, got {list(t.shape)}"
                  + (" (theta=None selects the real EMA, whose gamma is [D, N, 1])" if name == "gamma" else ""))
    if h0 is not None:
        check(tuple(h0.shape) == (B, D, N) and h0.is_complex(),
              f"cema: h0 must be complex [B={B}, D={D}, N={N}], got {h0.dtype} {tuple(h0.shape)}")


_EAGER: dict = {}  # these ops wrapped by torch.compiler.disable, made on first use under torch.compile


def eager_under_compile(fn):
    """Run ``fn`` outside any torch.compile graph: torch 2.13's inductor compiles the complex EMA to NaN losses
    from the second optimiser step (tests/architectures/test_megalodon.py). The wrapper is made lazily
    because importing torch's compiler loads triton and costs a second at import."""
    name = fn.__name__

    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            if name not in _EAGER:
                _EAGER[name] = torch.compiler.disable(fn)
            return _EAGER[name](*args, **kwargs)
        return fn(*args, **kwargs)

    return functools.wraps(fn)(call)


@eager_under_compile
def cema(x, alpha, delta, theta, gamma, omega, h0=None, return_state=False, backend=None):
    """Megalodon's complex EMA over x [B, D, L] -> (y [B, D, L], h_L [B, D, N] complex or None).

    ``theta=None`` with ``gamma`` [D, N, 1] is MEGA's real damped EMA (phase 0).
    ``h0`` is the incoming state (streaming / chunk-parallel); ``return_state`` returns the state after
    the last step. Computed in float32 (float64 for float64 inputs) whatever the input dtype.
    Backends: ``reference`` (sequential recurrence), ``torch`` (FFT convolution), ``triton`` (scan).
    """
    _validate(x, alpha, delta, theta, gamma, omega, h0)
    b = resolve_backend(backend, x, "cema")
    if b == "reference":
        y, h = cema_reference(x, alpha, delta, theta, gamma, omega, h0)
        return y, (h if return_state else None)
    if b == "torch":
        return cema_fft(x, alpha, delta, theta, gamma, omega, h0, return_state)
    from kernels.cema.triton_impl import cema_triton_forward

    def grad_fn(x, alpha, delta, theta, gamma, omega, h0):
        return cema_fft(x, alpha, delta, theta, gamma, omega, h0, return_state=True)

    y, h = recompute_grad(cema_triton_forward, grad_fn, x, alpha, delta, theta, gamma, omega, h0)
    return y.to(x.dtype), (h if return_state else None)


@eager_under_compile
def cema_step_coefficients(alpha, delta, theta, gamma, omega):
    """What a decoding step needs, computed once: (p [D, N], q [D, N] complex, gamma_c [D, N] complex,
    omega [D]). A module caches it while its parameters are unchanged (eval-time decoding)."""
    p, log_q, gamma_c = cema_coefficients(alpha, delta, theta, gamma)
    return p, torch.exp(log_q), gamma_c, omega.to(p.dtype).reshape(-1)


@eager_under_compile
def cema_step(x_t, h, alpha=None, delta=None, theta=None, gamma=None, omega=None, coefficients=None):
    """O(1) decoding step: x_t [B, D], h [B, D, N] complex (or None) -> (y_t [B, D], h').

    Pass the parameters, or ``coefficients`` from ``cema_step_coefficients`` to skip recomputing them."""
    check(x_t.dim() == 2, f"cema_step: x_t must be [B, D], got {tuple(x_t.shape)}")
    if coefficients is None:
        coefficients = cema_step_coefficients(alpha, delta, theta, gamma, omega)
    p, q, gamma_c, om = coefficients
    if h is None:
        h = torch.zeros(*x_t.shape, p.shape[1], dtype=q.dtype, device=x_t.device)
    xc = x_t.to(p.dtype)
    h = q * h.to(q.dtype) + p * xc[..., None]
    y = (gamma_c * h).sum(-1).real + om * xc
    return y.to(x_t.dtype), h

"""Pieces shared by the Triton kernels (imported only when a Triton path runs)."""

import triton
import triton.language as tl


@triton.jit
def online_softmax_update(s, m_i, l_i, acc):
    """One block of scores ``s`` [M, N] into the running (max, sum, accumulator) of an online softmax.
    Returns the new max, sum, rescaled accumulator and the block's probabilities (to multiply by V)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet stay empty
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None], p

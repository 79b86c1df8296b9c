"""Shared sequence operators (CEMA, TimestepNorm, chunked and memory attention): a PyTorch reference,
fast paths and Triton kernels behind one dispatching function per op. Triton is imported lazily."""

"""Handing memory back to the system (Linux; elsewhere these do nothing)."""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch

_MADV_DONTNEED = 4
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def release_pages(tensor: torch.Tensor) -> None:
    """Drop a memory-mapped tensor's resident pages from the process.

    ``torch.load(mmap=True)`` maps the file privately: once a tensor has been copied out, its pages
    would otherwise stay counted in the process's memory until the whole file is closed. Dropped
    pages are read from the file again if the tensor is ever touched, so nothing is lost.
    """
    if _LIBC is None or tensor.device.type != "cpu":
        return
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def return_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``).

    glibc keeps freed tensors of a few MB in its heap: the temporaries of quantizing one layer, between the
    quantized layers that stay (the loader calls this after each layer, else the process grows by up to a
    quantized model's size again while one loads on the CPU), and a freed quantized model's own layers (call
    this after dropping one on the CPU to get its memory back).
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)

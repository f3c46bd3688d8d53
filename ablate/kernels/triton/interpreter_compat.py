"""Three fixes to triton 3.6's CPU interpreter (TRITON_INTERPRET=1), so kernels can be tested on CPU.

1. Loops with run-time bounds under numpy >= 2.3. The interpreter holds every scalar as a one-element 1-d array and converts it for ``range()`` with
``int(array)``, which newer numpy refuses ("only 0-dimensional arrays can be converted to Python
scalars"): any ``for i in range(0, n, BLOCK)`` with ``n`` a kernel argument then fails on CPU, while
the same kernel compiles fine for a GPU. This patch changes only that conversion, only in the
interpreter, and only when numpy needs it.

2. ``tl.dot`` on bf16 operands. The interpreter stores bf16 as its uint16 bit patterns and multiplies
those integers (a 16 x 16 bf16 product comes out ~1e10 off); the patch converts them to fp32 first,
which is what the GPU's bf16 MMA with fp32 accumulation computes.

3. fp32 -> bf16 rounding. The interpreter truncates the mantissa where a GPU rounds to nearest even,
so every bf16 store came out up to one ulp low (always towards zero) and kernels that round
intermediates to bf16 compounded it. The patch rounds as the GPU (and torch) does.

Compiled (GPU) kernels never see these patches.
"""

from __future__ import annotations

import os

import numpy as np


def _numpy_refuses_1d_int() -> bool:
    try:
        int(np.array([1]))
    except TypeError:
        return True
    return False


def patch_when_interpreting() -> None:
    """The fixes, when TRITON_INTERPRET=1 (CPU tests); every kernel module calls this on import."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        patch_interpreter()


def patch_interpreter() -> None:
    from triton.runtime import interpreter

    if getattr(interpreter, "_ablate_patched", False):
        return
    interpreter._ablate_patched = True
    _patch_bf16_dot(interpreter)
    _patch_bf16_rounding(interpreter)
    if not _numpy_refuses_1d_int():
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


def _patch_bf16_dot(interpreter) -> None:
    import triton.language as tl

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def to_fp32(handle):
        data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data.reshape(handle.data.shape), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a, b = to_fp32(a), to_fp32(b)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot


def _patch_bf16_rounding(interpreter) -> None:
    import triton.language as tl

    original = getattr(interpreter, "_convert_float", None)
    if original is None:  # a triton whose interpreter converts elsewhere: nothing to patch
        return

    def convert(data, src, dst, rounding_mode):
        if not (src == tl.float32 and dst == tl.bfloat16):
            return original(data, src, dst, rounding_mode)
        bits = np.ascontiguousarray(data).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # nearest, ties to even
        nan = np.isnan(np.ascontiguousarray(data).view(np.float32))
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # stays a (quiet) NaN
        return rounded.reshape(np.shape(data))

    interpreter._convert_float = convert

"""Sixteen float32 lanes as a Numba value: the `F32x16` type (LLVM's <16 x float>, one AVX-512
register) and the few operations the direct conv kernels (`direct.py`) are written with.

Why: a direct convolution is fast only if a tile of P pixels × 32 output channels of
accumulators stays in registers while the kernel loops over taps and input channels. Numba's
loop vectoriser does not find that shape from scalar code (it vectorises the channel loop
with gathers instead: ≈7 GFLOP/s here); with these values the kernels say it, and LLVM keeps
the 16 accumulators in zmm registers (≈210 GFLOP/s on this machine's two cores, whose
measured FMA peak is ≈232).

Loads and stores read 16 consecutive float32 of a C-contiguous float32 array from a flat
element index, unchecked: callers guarantee the bounds. On a machine without AVX-512, LLVM
splits each value into narrower registers (correct, slower).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic, models, register_model

LANES = 16
_VECTOR = ir.VectorType(ir.FloatType(), LANES)
_ZERO = ir.Constant(_VECTOR, [0.0] * LANES)


class F32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="F32x16")


f32x16 = F32x16Type()


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def vzero(typingctx):
    """Sixteen zeros."""
    def codegen(context, builder, signature, args):
        return _ZERO
    return f32x16(), codegen


@intrinsic
def vload(typingctx, array, index):
    """array.flat[index : index + 16] (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
    return f32x16(array, index), codegen


@intrinsic
def vstore(typingctx, array, index, value):
    """array.flat[index : index + 16] = value (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(array, index, value), codegen


@intrinsic
def sload(typingctx, array, index):
    """array.flat[index] (unchecked)."""
    def codegen(context, builder, signature, args):
        return builder.load(_element_pointer(context, builder, signature.args[0], *args),
                            align=4)
    return array.dtype(array, index), codegen


@intrinsic
def broadcast(typingctx, scalar):
    """A float32 in all sixteen lanes."""
    def codegen(context, builder, signature, args):
        first = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), args[0],
                                       ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(first, ir.Constant(_VECTOR, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                                  [0] * LANES))
    return f32x16(types.float32), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c, lane by lane, one rounding (llvm.fma)."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3), "llvm.fma.v16f32")
        return builder.call(function, args)
    return f32x16(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1])
    return f32x16(a, b), codegen


@intrinsic
def vrelu(typingctx, a):
    """max(a, 0); NaN stays NaN (as the ReLU kernels)."""
    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered("<", args[0], _ZERO), _ZERO, args[0])
    return f32x16(a), codegen


@intrinsic
def vmasked(typingctx, a, mask):
    """a where mask > 0, else 0 (the ReLU's backward; NaN in mask: 0)."""
    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered(">", args[1], _ZERO), args[0], _ZERO)
    return f32x16(a, mask), codegen


@intrinsic
def vmax(typingctx, a, b):
    """max(a, b) lane by lane, a NaN in b winning over a number in a (and a NaN in a
    staying): the max pool's rule, folded over a window as m = vmax(m, v)."""
    def codegen(context, builder, signature, args):
        first, second = args
        take = builder.or_(builder.fcmp_unordered("uno", second, second),
                           builder.fcmp_ordered(">", second, first))
        return builder.select(take, second, first)
    return f32x16(a, b), codegen


@intrinsic
def veven(typingctx, a, b):
    """The even lanes of a then b: elements 0, 2, ..., 30 of the 32 floats a ++ b (a row's
    every other element, as a stride-2 pool reads it)."""
    def codegen(context, builder, signature, args):
        even = ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(range(0, 2 * LANES, 2)))
        return builder.shuffle_vector(args[0], args[1], even)
    return f32x16(a, b), codegen


@intrinsic
def vsub(typingctx, a, b):
    def codegen(context, builder, signature, args):
        return builder.fsub(args[0], args[1])
    return f32x16(a, b), codegen

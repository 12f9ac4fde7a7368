"""Compile the Triton kernels of ``method="triton"`` to cubins for an H100 (sm_90) with
Triton's own ptxas, without a GPU; run by ``test_facility_location_triton.py`` in a fresh
process (``TRITON_INTERPRET`` unset). Prints one line per variant; exit status 1 if any
failed, 3 if this Triton cannot compile for NVIDIA GPUs."""

from __future__ import annotations

import sys
from typing import Any

# Pointer types of the kernels' tensor arguments, as _triton passes them.
POINTERS = {
    "X": "*fp32", "M": "*i1", "K": "*i64", "IDX": "*i64", "W": "*fp32", "G": "*fp32",
    "OBJ": "*fp64", "BAD": "*i32", "CUR": "*fp32", "TAKEN": "*i8", "TOL": "*fp64",
    "COUNT": "*fp64", "GAINS": "*fp32", "D": "*fp32", "FIRST": "*i64", "RAD": "*fp32",
}  # fmt: skip
BLOCKS: dict[str, dict[str, Any]] = {
    "fused": {"KP": 16, "BN": 64, "HAS_MASK": True},
    "gains": {"BI": 64, "BJ": 64, "HAS_MASK": True},
    "pick": {"BLOCK": 256, "HAS_MASK": True},
    "k_center": {"BLOCK": 256},
}
# (kernel, similarity codes (None: it has none), extra constants): every similarity of each
# kernel; the largest fused block (8 warps, as _triton launches it); integer arguments that
# Triton turns into constants when a call passes 1 (the features' unit stride always; n, d or
# the step or k sometimes).
VARIANTS: list[tuple[str, tuple[int | None, ...], dict[str, Any]]] = [
    ("fused", (0, 1, 2, 3), {"SHARE": True}),
    ("fused", (0,), {"SHARE": False, "BN": 128, "num_warps": 8}),
    ("fused", (1,), {"SHARE": False, "n": 1, "d": 1, "kmax": 1, "KP": 2, "BN": 16}),
    ("gains", (0, 1, 2), {}),
    ("gains", (0,), {"d": 1}),
    ("pick", (0, 1, 2), {}),
    ("pick", (1,), {"step": 1}),
    ("k_center", (None,), {}),
    ("k_center", (None,), {"n": 1, "d": 1, "kmax": 1, "BLOCK": 16}),
]
COUNT = sum(len(sims) for _, sims, _ in VARIANTS)


def main() -> int:
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction
    except ImportError as error:
        print(f"this Triton cannot compile for NVIDIA GPUs: {error}")
        return 3
    from coreset_sampler.kernels.facility_location import _triton_kernels

    failed = 0
    for name, sims, extra in VARIANTS:
        fn = JITFunction(getattr(_triton_kernels, name))
        options = {"num_warps": extra.get("num_warps", 4)}
        for sim in sims:
            constexprs = {**BLOCKS[name], "sxd": 1, **extra}
            if sim is not None:
                constexprs["SIM"] = sim
            constexprs.pop("num_warps", None)
            signature = {
                p.name: "constexpr" if p.name in constexprs else POINTERS.get(p.name, "i32")
                for p in fn.params
            }
            shown = {k: v for k, v in constexprs.items() if k not in BLOCKS[name]}
            label = f"{name} {shown} {options}"
            try:
                source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
                kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
                assert kernel.asm["cubin"], "no cubin"
            except Exception as error:
                failed += 1
                print(f"{label} FAILED {type(error).__name__}: {error}")
            else:
                print(f"{label} ok {len(kernel.asm['cubin'])} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""How the compiled kernel is compiled: ``numba.njit`` with the kernel's options.

numba is optional (the ``fast`` extra). Without it (or with a broken install) the decorator
leaves the functions as they are: :data:`ENABLED` is false, the solver refuses to run them
(they would be very slow), and the tests still check their source as plain Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

numba: Any
try:
    import numba
except Exception as exc:  # not installed, or broken (e.g. built for another NumPy)
    numba = None
    IMPORT_ERROR: BaseException | None = exc
else:
    IMPORT_ERROR = None

ENABLED = numba is not None

# reductions may be reassociated (so that they vectorise) and assume no NaN: the kernel checks
# its input first
REDUCTION = frozenset({"reassoc", "nsz", "nnan"})
# multiply-adds may be fused (the exp polynomial: fewer operations, less rounding)
CONTRACT = frozenset({"contract"})


def jit(fastmath: frozenset[str] = frozenset()) -> Callable[[F], F]:
    """``numba.njit`` (cached on disk, releasing the GIL, NumPy's error model) with these
    fastmath flags, or the identity without numba."""
    if numba is None:
        return lambda function: function
    options: bool | set[str] = set(fastmath) if fastmath else False
    compile_: Callable[[F], F] = numba.njit(
        cache=True, nogil=True, error_model="numpy", fastmath=options
    )
    return compile_

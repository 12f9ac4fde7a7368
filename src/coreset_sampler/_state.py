"""Declared state: a part names its state fields once, and its state dict follows from that.

As torchmetrics' ``Metric.add_state``: a stateful part calls :meth:`Stateful.add_state` for
each field (its name, a :class:`Codec` that writes the value as plain Python values and reads
it back checked, its initial value) and :meth:`Stateful.add_config` for each setting a saved
state must agree with. :class:`Composite` puts the parts of a sampler together: its state dict
holds the sampler's kind, a format version, the configuration and each part's fields, and its
loader checks them all (kind, version, configuration, every field) before changing anything,
so that a state that does not fit is refused with a message that says what differs and leaves
the sampler as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

Check = Callable[[Any], "str | None"]


class Codec(NamedTuple):
    """How a field is written (``encode``: value → plain Python values, fresh) and read back
    (``decode(plain, where)`` → value, raising ``TypeError``/``ValueError`` that name
    ``where``)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where} should be an int, but got {value!r}")
    return int(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where} should be a bool, but got {value!r}")
    return bool(value)


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{where} should be a number, but got {value!r}")
    return float(value)


def _list_of(item: Callable[[Any, str], Any]) -> Callable[[Any, str], list[Any]]:
    def decode(value: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} should be a list, but got {type(value).__name__}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return decode


def _optional(item: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, where: None if value is None else item(value, where)


def _same(value: Any) -> Any:
    return value


BOOL = Codec(bool, _bool)
INT = Codec(int, _int)
FLOAT = Codec(float, _float)
OPTIONAL_INT = Codec(_same, _optional(_int))
INTS = Codec(list, _list_of(_int))
FLOATS = Codec(list, _list_of(_float))
INT_LISTS = Codec(lambda v: [list(x) for x in v], _list_of(_list_of(_int)))
FLOAT_LISTS = Codec(lambda v: [list(x) for x in v], _list_of(_list_of(_float)))
OPAQUE = Codec(_same, lambda value, where: value)  # (a monitor's own state: it checks it)


def _counters_decode(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} should be a mapping, but got {type(value).__name__}")
    return {str(k): _float(v, f"{where}[{k!r}]") for k, v in value.items()}


COUNTERS = Codec(dict, _counters_decode)


def _rng_encode(rng: np.random.Generator) -> dict[str, Any]:
    state: Mapping[str, Any] = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: int(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _rng_decode(value: Any, where: str) -> np.random.Generator:
    try:
        bit = np.random.PCG64()
        full: dict[str, Any] = {
            "bit_generator": value["bit_generator"],
            "state": dict(value["state"]),
            "has_uint32": value["has_uint32"],
            "uinteger": value["uinteger"],
        }
        bit.state = full  # type: ignore[assignment]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where} is not the state of a PCG64 generator ({err})") from None
    return np.random.Generator(bit)


def _rngs_decode(value: Any, where: str) -> dict[str, np.random.Generator]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} should be a mapping, but got {type(value).__name__}")
    return {str(k): _rng_decode(v, f"{where}[{k!r}]") for k, v in value.items()}


RNGS = Codec(lambda v: {k: _rng_encode(g) for k, g in v.items()}, _rngs_decode)


def indices_below(n: int) -> Check:
    """A check of a (nested) list of example indices: each in ``[0, n)``."""

    def check(value: Any) -> str | None:
        flat = np.asarray([i for v in value for i in v] if _nested(value) else value, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            bad = flat[(flat < 0) | (flat >= n)][:5].tolist()
            return f"holds example indices outside [0, {n}): {bad}"
        return None

    return check


def finite_weights(value: Any) -> str | None:
    """A check of (nested) weights: finite and non-negative."""
    flat = [w for v in value for w in v] if _nested(value) else value
    if not all(math.isfinite(w) and w >= 0.0 for w in flat):
        return "holds weights that are negative, NaN or infinite"
    return None


def _nested(value: Any) -> bool:
    return bool(value) and isinstance(value[0], (list, tuple))


class _Field(NamedTuple):
    attr: str
    codec: Codec
    check: Check | None


class Stateful:
    """A part whose state is declared: :meth:`state_dict` and :meth:`load_state_dict` follow
    from the :meth:`add_state` calls; :meth:`config` from the :meth:`add_config` calls."""

    def __init__(self) -> None:
        self._fields: dict[str, _Field] = {}
        self._settings: dict[str, Any] = {}

    def add_state(
        self, name: str, codec: Codec, default: Any, *, attr: str | None = None,
        check: Check | None = None,
    ) -> None:  # fmt: skip
        """Declare the state field ``name`` (kept in the attribute ``attr``, by default
        ``name``) and set it to ``default``; ``check`` returns an error message for a decoded
        value that is out of range."""
        self._fields[name] = _Field(attr or name, codec, check)
        setattr(self, attr or name, default)

    def add_config(self, name: str, value: Any) -> None:
        """Declare a setting (a plain Python value) that a loaded state must agree with."""
        self._settings[name] = value

    def config(self) -> dict[str, Any]:
        return dict(self._settings)

    @property
    def has_state(self) -> bool:
        return bool(self._fields)

    def state_dict(self) -> dict[str, Any]:
        """The declared fields as plain Python values (fresh objects)."""
        return {name: f.codec.encode(getattr(self, f.attr)) for name, f in self._fields.items()}

    def read_state(self, state: Any, where: str = "state") -> dict[str, Any]:
        """Check ``state`` against the declarations and decode it, changing nothing."""
        if not isinstance(state, Mapping):
            raise TypeError(f"{where} should be a mapping, but got {type(state).__name__}")
        missing = sorted(set(self._fields) - set(state))
        if missing:
            raise ValueError(f"{where} is missing keys {missing}")
        unknown = sorted(set(state) - set(self._fields), key=str)
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}")
        values = {}
        for name, f in self._fields.items():
            value = f.codec.decode(state[name], f"{where}[{name!r}]")
            problem = None if f.check is None or value is None else f.check(value)
            if problem is not None:
                raise ValueError(f"{where}[{name!r}] {problem}")
            values[name] = value
        problem = self._check_together(values)
        if problem is not None:
            raise ValueError(f"{where} {problem}")
        return values

    def _check_together(self, values: Mapping[str, Any]) -> str | None:
        """What the decoded fields must satisfy together: an error message, or None (nothing
        by default)."""
        return None

    def apply_state(self, values: Mapping[str, Any]) -> None:
        """Set the fields decoded by :meth:`read_state`, then :meth:`_after_load`."""
        for name, value in values.items():
            setattr(self, self._fields[name].attr, value)
        self._after_load()

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict` (checked first: a state that does not fit changes
        nothing)."""
        self.apply_state(self.read_state(state))

    def _after_load(self) -> None:
        """Rebuild what derives from the fields (nothing by default)."""


class Composite:
    """The parts of a sampler, saved and restored together under its kind and format version.

    ``state_dict()`` is ``{"kind", "version", "config", <part>: <its fields>, ...}``; the
    configuration is the sampler's own ``settings`` and the parts' together.
    """

    def __init__(
        self,
        kind: str,
        version: int,
        parts: Mapping[str, Stateful],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.version = version
        self.parts = dict(parts)
        self.settings = dict(settings or {})

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.settings)
        for part in self.parts.values():
            out.update(part.config())
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": self.kind, "version": self.version}
        state["config"] = self.config()
        for name, part in self.parts.items():
            if part.has_state:  # (a part with settings only has no entry)
                state[name] = part.state_dict()
        return state

    def read(self, state: Any) -> dict[str, dict[str, Any]]:
        """Check kind, version, configuration and every part's fields; decode, change
        nothing."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state should be a mapping, but got {type(state).__name__}")
        kind, version = state.get("kind"), state.get("version")
        if kind is None and version == 1:
            raise ValueError(
                f"state has format version 1 (coreset_sampler 0.1), which this {self.kind} "
                f"does not read (it reads version {self.version}): save it again with this "
                "version"
            )
        if kind != self.kind:
            what = "no 'kind'" if kind is None else f"kind {kind!r}"
            raise ValueError(
                f"state has {what}: it is not the state of a {self.kind} (saved by another "
                "sampler?)"
            )
        if version != self.version:
            older = isinstance(version, int) and 1 < version < self.version
            raise ValueError(
                f"state has format version {version!r}, but this {self.kind} reads version "
                f"{self.version}"
                + (" (it was saved by an earlier version of coreset_sampler: save it again with "
                   "this one)" if older else "")
            )  # fmt: skip
        self._check_config(state.get("config"))
        parts = {name: part for name, part in self.parts.items() if part.has_state}
        missing = sorted(set(parts) - set(state))
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        unknown = sorted(set(state) - {*parts, "kind", "version", "config"}, key=str)
        if unknown:
            raise ValueError(f"state has unknown keys {unknown}")
        return {
            name: part.read_state(state[name], f"state[{name!r}]") for name, part in parts.items()
        }

    def apply(self, values: Mapping[str, Mapping[str, Any]]) -> None:
        for name, part_values in values.items():
            self.parts[name].apply_state(part_values)

    def _check_config(self, saved: Any) -> None:
        if not isinstance(saved, Mapping):
            raise ValueError("state has no 'config' mapping")
        ours = self.config()
        for key, value in ours.items():
            if key not in saved:
                raise ValueError(f"state has no setting {key!r} in its 'config'")
            if saved[key] != value:
                hint = ""
                if key in ("num_replicas", "rank"):
                    hint = " (resuming with another world size or rank is not supported)"
                raise ValueError(
                    f"state was saved with {key}={saved[key]!r} but this sampler has "
                    f"{key}={value!r}{hint}"
                )
        unknown = sorted(set(saved) - set(ours), key=str)
        if unknown:
            raise ValueError(f"state has settings this {self.kind} does not have: {unknown}")

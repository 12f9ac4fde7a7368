"""Tests of coreset_sampler._state (declared state) and of what every sampler's state refuses:
another kind, another version, another configuration, fields of the wrong type or range; a
refused state changes nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch

from coreset_sampler import (
    CraigBatchSampler,
    CrestBatchSampler,
    DropLearned,
    KCenterBatchSampler,
    RandomBatchSampler,
)
from coreset_sampler._state import FLOAT_LISTS, INT, INT_LISTS, Composite, Stateful, indices_below

from .samplers._helpers import FakeMonitor, Proxies, stream


class Part(Stateful):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.add_config("size", size)
        self.add_state("count", INT, 0)
        self.add_state("lists", INT_LISTS, [], check=indices_below(size))
        self.add_state("weights", FLOAT_LISTS, [[1.0]])
        self.loaded = 0

    def _after_load(self) -> None:
        self.loaded += 1


def test_declared_fields_make_the_state_and_read_it_back() -> None:
    part = Part(5)
    part.count, part.lists = 3, [[1, 4]]
    state = part.state_dict()
    assert state == {"count": 3, "lists": [[1, 4]], "weights": [[1.0]]}
    state["lists"][0].append(0)  # a fresh copy: the part is not changed through it
    assert part.lists == [[1, 4]]
    other = Part(5)
    other.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert (other.count, other.lists, other.loaded) == (3, [[1, 4]], 1)
    assert other.config() == {"size": 5}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"count": "3"}, TypeError, r"state\['count'\] should be an int, but got '3'"),
        ({"count": True}, TypeError, r"state\['count'\] should be an int"),
        ({"lists": [[1, 5]]}, ValueError, r"state\['lists'\] holds example indices outside"),
        ({"lists": [1]}, TypeError, r"state\['lists'\]\[0\] should be a list"),
        ({"weights": [["x"]]}, TypeError, r"state\['weights'\]\[0\]\[0\] should be a number"),
        ({"extra": 1}, ValueError, r"state has unknown keys \['extra'\]"),
    ],
)
def test_a_field_that_does_not_fit_is_refused_and_nothing_changes(
    change: dict[str, Any], error: type[Exception], match: str
) -> None:
    part = Part(5)
    state = {**part.state_dict(), **change}
    with pytest.raises(error, match=match):
        part.load_state_dict(state)
    assert part.count == 0 and part.loaded == 0
    with pytest.raises(ValueError, match=r"state is missing keys \['count'\]"):
        part.load_state_dict({"lists": [], "weights": []})


def test_composite_checks_kind_version_and_configuration_first() -> None:
    a, b = Part(5), Part(6)
    both = Composite("Thing", 2, {"a": a, "b": b}, {"mode": "x"})
    state = both.state_dict()
    assert state["kind"] == "Thing" and state["version"] == 2
    assert state["config"] == {"mode": "x", "size": 6}  # (later parts win a shared name)
    for bad, match in [
        ({"kind": "Other"}, r"state has kind 'Other': it is not the state of a Thing"),
        ({"version": 3}, r"state has format version 3, but this Thing reads version 2"),
        (
            {"config": {"mode": "y", "size": 6}},
            r"saved with mode='y' but this sampler has mode='x'",
        ),
        ({"config": {"mode": "x"}}, r"state has no setting 'size'"),
        ({"config": {"mode": "x", "size": 6, "z": 1}}, r"settings this Thing does not have: \['z'"),
    ]:
        with pytest.raises(ValueError, match=match):
            both.read({**state, **bad})
    with pytest.raises(ValueError, match=r"state has format version 1 \(coreset_sampler 0.1\)"):
        both.read({"version": 1, "seed": 0})
    values = both.read(state)
    both.apply(values)
    assert a.loaded == b.loaded == 1


# --------------------------------------------------------------------------- the samplers


def _samplers() -> dict[str, Any]:
    n = 300
    return {
        "crest": lambda **kw: CrestBatchSampler(n, 10, callback=Proxies(n), seed=0, **kw),
        "craig": lambda **kw: CraigBatchSampler(n, 10, callback=Proxies(n), seed=0, **kw),
        "k-center": lambda **kw: KCenterBatchSampler(n, 10, callback=Proxies(n), seed=0, **kw),
        "random": lambda **kw: RandomBatchSampler(n, 10, seed=0, **kw),
    }


@pytest.mark.parametrize("name", ["crest", "craig", "k-center", "random"])
def test_every_sampler_refuses_another_kind_budget_or_version(name: str) -> None:
    build = _samplers()[name]
    s = build()
    stream(s, 3)
    state = json.loads(json.dumps(s.state_dict()))
    before = s.state_dict()
    for other, make in _samplers().items():
        if other != name:
            with pytest.raises(ValueError, match=r"it is not the state of a"):
                make().load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with budget=0.1 but this sampler has budget=0.3"):
        build(budget=0.3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"reads version 2"):
        build().load_state_dict({**state, "version": 99})
    with pytest.raises(TypeError, match="state should be a mapping"):
        s.load_state_dict([state])  # type: ignore[arg-type]
    assert s.state_dict() == before  # refused states changed nothing
    fresh = build()
    fresh.load_state_dict(state)
    assert stream(fresh) == stream(s)


def test_crest_refuses_other_labels_pools_dropping_and_bad_values() -> None:
    n = 300
    labels = np.arange(n) % 3

    def crest(**kw: Any) -> CrestBatchSampler:
        kw.setdefault("labels", labels)
        return CrestBatchSampler(n, 10, callback=Proxies(n), seed=0, budget=0.5, **kw)

    s = crest()
    stream(s, 7)
    state = s.state_dict()
    with pytest.raises(ValueError, match=r"saved with labels='300 labels, 3 classes, crc32"):
        crest(labels=np.arange(n) % 4).load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"saved with pool_size=10 but this sampler has pool_size=20"
    ):
        crest(pool_size=20).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with drop_learned='DropLearned\(threshold=0.1"):
        crest(drop_learned=DropLearned(window=5)).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with monitor=False but this sampler has"):
        crest(monitor=FakeMonitor([0.0])).load_state_dict(state)
    bad = copy.deepcopy(state)
    bad["cycle"]["coresets"][0][0] = n
    with pytest.raises(ValueError, match=r"state\['cycle'\]\['coresets'\] holds example indices"):
        crest().load_state_dict(bad)
    bad = copy.deepcopy(state)
    bad["cycle"]["weights"][1][2] = float("nan")
    with pytest.raises(ValueError, match=r"state\['cycle'\]\['weights'\] holds weights that are"):
        crest().load_state_dict(bad)
    bad = copy.deepcopy(state)
    bad["dropper"]["dropped"] = list(range(61))  # more than 20% of 300
    with pytest.raises(ValueError, match=r"\['dropped'\] holds 61 examples; this sampler drops"):
        crest().load_state_dict(bad)


def test_a_monitor_that_refuses_its_state_leaves_the_sampler_as_it_was() -> None:
    class Refusing(FakeMonitor):
        def load_state_dict(self, state: dict[str, Any]) -> None:
            raise ValueError("not my state")

    s = CrestBatchSampler(300, 10, callback=Proxies(300), monitor=FakeMonitor([0.1]), seed=0)
    stream(s, 4)
    state = s.state_dict()
    other = CrestBatchSampler(300, 10, callback=Proxies(300), monitor=Refusing([0.1]), seed=1)
    before = other.state_dict()
    with pytest.raises(ValueError, match="not my state"):
        other.load_state_dict(state)
    assert other.state_dict() == before
    assert torch.equal(torch.tensor(other.seed), torch.tensor(1))

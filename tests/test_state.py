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
    InfoBatchSampler,
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
        "infobatch": lambda **kw: InfoBatchSampler(
            n, 10, num_epochs=5, seed=0, **{"budget": 0.1, **kw}
        ),
    }


@pytest.mark.parametrize("name", ["crest", "craig", "k-center", "random", "infobatch"])
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
    with pytest.raises(ValueError, match=r"reads version 4$"):
        build().load_state_dict({**state, "version": 99})
    # a state of the format before (3: no CREST ``weighting``) says it is older
    with pytest.raises(ValueError, match=r"version 3, but .* reads version 4 \(it was saved by an"):
        build().load_state_dict({**state, "version": 3})
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
        ValueError, match=r"saved with pool_size=30 but this sampler has pool_size=25"
    ):
        crest(pool_size=25).load_state_dict(state)
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


def test_weights_are_refused_when_negative_or_infinite_and_taken_when_zero() -> None:
    s = CrestBatchSampler(300, 10, callback=Proxies(300), seed=0, budget=0.5)
    stream(s, 2)
    for value, ok in [(-0.5, False), (float("inf"), False), (0.0, True)]:
        state = s.state_dict()
        state["cycle"]["weights"][0][0] = value
        fresh = CrestBatchSampler(300, 10, callback=Proxies(300), seed=0, budget=0.5)
        if ok:
            fresh.load_state_dict(state)
            assert fresh.coreset_weights[0][0] == 0.0
        else:
            with pytest.raises(ValueError, match="holds weights that are negative, NaN or inf"):
                fresh.load_state_dict(state)


def test_the_state_format_of_each_sampler() -> None:
    """The keys of version 4 (a renamed key would still round-trip: this pins the format)."""
    top = {"kind", "version", "config", "stream"}
    stream_fields = {"seed", "epoch", "step_in_epoch", "step"}
    crest = CrestBatchSampler(300, 10, callback=Proxies(300), labels=np.arange(300) % 2)
    mon = CrestBatchSampler(300, 10, callback=Proxies(300), monitor=FakeMonitor([0.0]))
    craig = CraigBatchSampler(300, 10, callback=Proxies(300))
    kc = KCenterBatchSampler(300, 10, callback=Proxies(300))
    rand = RandomBatchSampler(300, 10)
    base_config = {"num_samples", "batch_size", "budget", "drop_last", "num_replicas", "rank"}
    pools = {"pool_size", "labels"}
    expected = {
        crest: (top | {"policy", "cycle", "dropper", "telemetry"},
                base_config | pools | {"monitor", "warmup_steps", "similarity", "drop_learned",
                                       "reselect_every", "num_pools", "max_uses", "weighting"},
                {"steps_since_selection"}),
        mon: (top | {"policy", "cycle", "dropper", "telemetry"},
              base_config | pools | {"monitor", "warmup_steps", "similarity", "drop_learned",
                                     "num_pools", "pool_multiplier", "check_size", "max_uses",
                                     "weighting"},
              {"num_pools", "interval", "steps_since_check", "monitor_state"}),
        craig: (top | {"coreset", "telemetry"},
                base_config | {"coreset_size", "reselect_every", "similarity", "method",
                               "epsilon", "labels"},
                None),
        kc: (top | {"policy", "cycle", "telemetry"},
             base_config | pools | {"reselect_every", "num_pools"}, {"steps_since_selection"}),
        rand: (top, base_config, None),
    }  # fmt: skip
    for sampler, (keys, config, policy) in expected.items():
        state = sampler.state_dict()
        assert set(state) == keys, type(sampler).__name__
        assert set(state["config"]) == config, type(sampler).__name__
        assert set(state["stream"]) - {"rngs"} == stream_fields
        if policy is not None:
            assert set(state["policy"]) == policy
    assert set(crest.state_dict()["cycle"]) == {
        "coresets", "weights", "order", "position", "passes"
    }  # fmt: skip
    assert set(crest.state_dict()["dropper"]) == {"dropped", "low_since"}
    assert set(craig.state_dict()["coreset"]) == {"coreset", "weights", "selected_epoch"}
    assert set(crest.state_dict()["stream"]["rngs"]) == {"pools", "checks", "shuffle", "warmup"}


@pytest.mark.parametrize(
    ("build", "change", "setting"),
    [
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"reselect_every": 7}, "reselect_every"),
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"num_pools": 3}, "num_pools"),
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"warmup_steps": 2}, "warmup_steps"),
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"similarity": "exp"}, "similarity"),
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300),
                                        monitor=FakeMonitor([0.0]), **kw),
         {"pool_multiplier": 2}, "pool_multiplier"),
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300),
                                        monitor=FakeMonitor([0.0]), **kw),
         {"check_size": 20}, "check_size"),
        (lambda **kw: CrestBatchSampler(300, 10, callback=Proxies(300),
                                        monitor=FakeMonitor([0.0]), **kw),
         {"num_pools": 3}, "num_pools"),
        (lambda **kw: KCenterBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"reselect_every": 7}, "reselect_every"),
        (lambda **kw: CraigBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"reselect_every": 2}, "reselect_every"),
        (lambda **kw: CraigBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"similarity": "exp"}, "similarity"),
        (lambda **kw: CraigBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"method": "stochastic"}, "method"),
        (lambda **kw: CraigBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"epsilon": 0.2}, "epsilon"),
        (lambda **kw: CraigBatchSampler(300, 10, callback=Proxies(300), **kw),
         {"labels": np.arange(300) % 3}, "labels"),
    ],
)  # fmt: skip
def test_a_state_of_another_setting_is_refused(
    build: Any, change: dict[str, Any], setting: str
) -> None:
    state = build().state_dict()
    with pytest.raises(ValueError, match=rf"state was saved with {setting}="):
        build(**change).load_state_dict(state)
    build().load_state_dict(state)  # the same settings: fine


@pytest.mark.parametrize("name", ["crest", "craig", "k-center", "random", "infobatch"])
def test_a_state_saved_before_the_first_batch_resumes_like_a_fresh_start(name: str) -> None:
    build = _samplers()[name]
    reference = build()
    expected = stream(reference) + stream(reference)
    saved = json.loads(json.dumps(build().state_dict()))
    resumed = build()
    resumed.load_state_dict(saved)
    assert stream(resumed) + stream(resumed) == expected


@pytest.mark.parametrize("name", ["crest", "craig", "k-center", "random", "infobatch"])
@pytest.mark.parametrize("where", ["after the pass", "after the last batch", "set_epoch"])
def test_a_state_saved_at_an_epoch_boundary_resumes_the_next_epoch(name: str, where: str) -> None:
    build = _samplers()[name]
    reference = build()
    stream(reference)
    expected = stream(reference) + stream(reference)  # epochs 1 and 2
    run = build()
    if where == "after the last batch":  # the pass is not finished: its end was not observed
        batches = iter(run)
        for _ in range(len(run)):
            next(batches)
    else:
        stream(run)
    saved = json.loads(json.dumps(run.state_dict()))
    resumed = build()
    resumed.load_state_dict(saved)
    if where == "set_epoch":  # the loop's usual call at the top of epoch 1
        resumed.set_epoch(1)
    assert stream(resumed) + stream(resumed) == expected
    assert resumed.epoch == reference.epoch == 3


@pytest.mark.parametrize("name", ["crest", "craig", "k-center", "random", "infobatch"])
def test_a_loop_that_breaks_out_early_gets_new_batches_and_set_epoch_chooses(name: str) -> None:
    reference = _samplers()[name]()
    epochs = [stream(reference) for _ in range(3)]
    s = _samplers()[name]()
    first = stream(s, 2)
    assert first == epochs[0][:2]
    second = stream(s, 2)  # like torch's samplers: the next pass, new batches (the next epoch)
    assert s.epoch == 1 and second != first
    # (CREST's and k-center's coresets carry over the passes)
    if name in ("random", "craig", "infobatch"):
        assert second == epochs[1][:2]
        s.set_epoch(1)  # the epoch it is in: a no-op, so the next pass is the next epoch
        assert stream(s) == epochs[2]
        s.set_epoch(1)  # another epoch: from its start
        assert stream(s) == epochs[1]


def test_a_monitor_without_state_methods_is_used_as_it_is() -> None:
    class Bare:
        interval = 2

        def anchor(self, *args: Any) -> None:
            pass

        def check(self) -> Any:
            return type("Report", (), {"rho": 0.0, "reselect": False})()

    def build() -> CrestBatchSampler:
        return CrestBatchSampler(300, 10, callback=Proxies(300), monitor=Bare(), seed=0, budget=0.5)

    reference = stream(build())
    s = build()
    stream(s, 6)
    state = s.state_dict()
    assert state["policy"]["monitor_state"] is None and s.telemetry.num_checks == 2
    again = build()
    again.load_state_dict(state)
    assert stream(again) == reference[6:]


def test_craig_state_values_are_checked() -> None:
    s = CraigBatchSampler(300, 10, callback=Proxies(300), seed=0)
    stream(s, 1)
    state = s.state_dict()
    bad = copy.deepcopy(state)
    bad["coreset"]["coreset"][0] = -1
    with pytest.raises(ValueError, match=r"\['coreset'\]\['coreset'\] holds example indices"):
        CraigBatchSampler(300, 10, callback=Proxies(300), seed=0).load_state_dict(bad)
    bad = copy.deepcopy(state)
    bad["coreset"]["weights"][0] = -1.0
    with pytest.raises(ValueError, match=r"\['coreset'\]\['weights'\] holds weights"):
        CraigBatchSampler(300, 10, callback=Proxies(300), seed=0).load_state_dict(bad)
    with pytest.raises(ValueError, match=r"state has unknown keys \['extra'\]"):
        CraigBatchSampler(300, 10, callback=Proxies(300), seed=0).load_state_dict(
            {**state, "extra": 1}
        )


@pytest.mark.parametrize(
    ("name", "part", "change", "message"),
    [
        ("crest", "cycle", {"order": [7, 9]}, r"\['cycle'\] holds an order \[7, 9\] that is not"),
        ("crest", "cycle", {"position": 9}, r"\['cycle'\] holds position=9 outside \[0, "),
        ("crest", "cycle", {"passes": 0}, r"\['cycle'\] holds passes=0 over \d+ coresets"),
        ("k-center", "cycle", "short weights", r"weights that do not match its coresets"),
        ("crest", "stream", {"step_in_epoch": 999}, r"holds step_in_epoch=999, outside the"),
        ("random", "stream", {"step_in_epoch": -1}, r"step_in_epoch"),
        ("craig", "coreset", "short weights", r"coreset of 30 examples and 29 weights"),
    ],
)
def test_fields_that_do_not_fit_together_are_refused(
    name: str, part: str, change: Any, message: str
) -> None:
    build = _samplers()[name]
    s = build()
    stream(s, 3)
    state = json.loads(json.dumps(s.state_dict()))
    if change == "short weights":
        weights = state[part]["weights"]
        if weights and isinstance(weights[0], list):
            weights[0] = weights[0][:-1]
        else:
            state[part]["weights"] = weights[:-1]
    else:
        state[part].update(change)
    fresh = build()
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(state)
    assert fresh.state_dict() == before


@pytest.mark.parametrize("name", ["crest", "craig", "k-center", "random", "infobatch"])
def test_set_epoch_of_the_current_epoch_during_a_pass_changes_nothing(name: str) -> None:
    # (frameworks may set the epoch once the loader has begun the pass: Lightning's fetcher
    # prefetches a batch before on_train_epoch_start)
    reference = _samplers()[name]()
    expected = stream(reference) + stream(reference)
    s = _samplers()[name]()
    got = []
    for k, batch in enumerate(s):
        got.append(([int(i) for i in batch], [i.weight for i in batch]))
        if k == 0:
            s.set_epoch(0)
    assert got + stream(s) == expected

"""The parts of federated training that need no federation: the engine section of the spec, the relay's
message format, the non-IID site split, a site's statistics, the round curves and the privacy budget."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gallery_common.contracts import write_split
from gallery_common.netutil import free_port
from gallery_trainer.curves import curve_panels
from gallery_trainer.federated.partition import dirichlet_partition
from gallery_trainer.federated.privacy import gaussian_epsilon
from gallery_trainer.federated.relay import FederationError, RelayClosed, read_message, write_message
from gallery_trainer.federated.site import Site, load_site_data, run_site
from gallery_trainer.spec import SpecError, config_hash, parse_spec

# config_hash of the minimal digits spec as the trainer computed it before federated engines existed
PLAIN_HASH_BEFORE_FEDERATION = "85a55b33c1f9ae2ef34aa0f20428ed4442a35bd8ff7c3b07135eb6a429f66ba5"


def spec_with(engine: dict[str, Any], **sections: Any) -> Any:
    return parse_spec({"name": "fed", "data": {"source": "builtin", "name": "digits"}, "engine": engine, **sections})


def problems(engine: dict[str, Any], **sections: Any) -> list[str]:
    with pytest.raises(SpecError) as refused:
        spec_with(engine, **sections)
    return refused.value.problems


def test_a_federated_engine_round_trips_and_leaves_other_specs_hashes_alone() -> None:
    spec = spec_with({"kind": "federated", "rounds": 5, "strategy": "fedprox", "proximal_mu": 0.1, "min_sites": 3})
    dumped = spec.model_dump(mode="json")["engine"]
    assert "ranks" not in dumped and dumped["proximal_mu"] == 0.1
    assert parse_spec(spec.model_dump(mode="json")) == spec
    # the federated fields are not part of any other engine's spec: hashes recorded before stay valid
    plain = parse_spec({"name": "fed", "data": {"source": "builtin", "name": "digits"}})
    assert "rounds" not in plain.model_dump(mode="json")["engine"]
    assert config_hash(plain) == PLAIN_HASH_BEFORE_FEDERATION


def test_federated_refusals_name_the_field() -> None:
    assert problems({"kind": "ddp", "rounds": 3}) == ["engine.rounds: only for kind federated"]
    assert problems({"kind": "federated", "ranks": 2}) == [
        "engine.ranks: a federated job runs on its sites, not on ranks"
    ]
    assert problems({"kind": "federated", "strategy": "fedprox"}) == [
        "engine.proximal_mu: fedprox needs a proximal_mu above 0"
    ]
    assert problems({"kind": "federated", "proximal_mu": 0.5}) == ["engine.proximal_mu: only for strategy fedprox"]
    refused = problems({"kind": "federated"}, preparation={"pca": {"components": 4}}, training={"early_stopping": {}})
    assert any(p.startswith("preparation: a federated job standardises only") for p in refused)
    assert any(p.startswith("training.early_stopping:") for p in refused)


def test_relay_messages_carry_arrays_exactly_and_refuse_what_they_should() -> None:
    stream = io.BytesIO()
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5, -2.0])]
    size = write_message(stream, {"op": "fit", "config": {"round": 2}}, arrays)
    assert size == len(stream.getvalue())
    stream.seek(0)
    header, back = read_message(stream)
    assert header == {"op": "fit", "config": {"round": 2}}
    assert [a.dtype for a in back] == [np.float32, np.float64] and all(
        np.array_equal(a, b) for a, b in zip(arrays, back, strict=True)
    )
    with pytest.raises(FederationError, match="cannot be sent"):
        write_message(io.BytesIO(), {}, [np.array(["text"])])
    with pytest.raises(RelayClosed):
        read_message(io.BytesIO(stream.getvalue()[:20]))


def test_dirichlet_split_gives_every_row_to_one_site_and_skews_the_classes() -> None:
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(y, n_sites=3, alpha=0.5, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    shares = np.array([np.bincount(y[p], minlength=10) / 100 for p in parts])
    # an IID split gives each site a third of every class; alpha 0.5 leaves some classes mostly at one site
    assert shares.max() > 0.6
    assert dirichlet_partition(y, 3, 0.5, seed=0)[0].tolist() == parts[0].tolist()


def test_a_site_sends_sums_and_counts_never_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    write_split(tmp_path / "train.npz", x, y)
    write_split(tmp_path / "validation.npz", x[:8], y[:8])
    header, arrays = Site(load_site_data("clinic-a", tmp_path)).statistics()
    assert header["examples"] == 40 and header["metrics"]["site"] == "clinic-a"
    assert len(header["metrics"]["fingerprint"]) == 64
    assert [a.shape for a in arrays] == [(5,), (5,)]
    assert np.allclose(arrays[0], x.astype(np.float64).sum(axis=0))
    assert np.allclose(arrays[1], np.square(x.astype(np.float64)).sum(axis=0))
    with pytest.raises(FederationError, match="not a site name"):
        load_site_data("a.b", tmp_path)
    (tmp_path / "validation.npz").unlink()
    with pytest.raises(FederationError, match=r"validation\.npz is missing"):
        load_site_data("clinic-a", tmp_path)


def test_a_site_waits_for_its_coordinator_then_says_none_answered(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for filename in ("train.npz", "validation.npz"):
        write_split(tmp_path / filename, rng.normal(size=(8, 3)).astype(np.float32), rng.integers(0, 2, 8))
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(FederationError, match=rf"no coordinator answered at {address} within 0.3 s \(--max-wait\)"):
        run_site(address, "clinic-a", tmp_path, max_wait=0.3)
    with pytest.raises(FederationError, match="is not host:port"):
        run_site("clinic-b.example", "clinic-a", tmp_path, max_wait=0.3)


def test_round_records_draw_rounds_not_epochs() -> None:
    records = [{"kind": "epoch", "epoch": r, "round": r, "val_accuracy": 0.5, "round_seconds": 0.2} for r in (1, 2)]
    panels = curve_panels(records)
    assert [p.x_label for p in panels] == ["round", "round", "round"]
    assert panels[2].title == "round time (s)"
    assert [p.x_label for p in curve_panels([{"kind": "epoch", "epoch": 1, "val_loss": 1.0}])] == [
        "epoch",
        "epoch",
        "step",
    ]


def test_the_privacy_budget_is_the_rdp_bound_of_the_gaussian_rounds() -> None:
    # the closed form is the minimum over Renyi orders of rounds * a / (2 z^2) + log(1 / delta) / (a - 1)
    orders = np.linspace(1.001, 400, 400_000)
    for z, rounds, delta in ((1.0, 4, 1e-5), (2.5, 50, 1e-6), (0.8, 1, 1e-3)):
        brute = float(np.min(rounds * orders / (2 * z**2) + np.log(1 / delta) / (orders - 1)))
        assert gaussian_epsilon(z, rounds, delta) == pytest.approx(brute, rel=1e-4)
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    assert gaussian_epsilon(2.0, 10, 1e-5) < gaussian_epsilon(1.0, 10, 1e-5) < gaussian_epsilon(1.0, 20, 1e-5)
    assert problems({"kind": "ddp", "differential_privacy": {"noise_multiplier": 1.0}}) == [
        "engine.differential_privacy: only for kind federated"
    ]
    both = {"kind": "federated", "differential_privacy": {"noise_multiplier": 1.0}, "secure_aggregation": {}}
    assert problems(both) == [
        "engine.secure_aggregation: not with differential_privacy (its server-side clipping needs each site's update)"
    ]

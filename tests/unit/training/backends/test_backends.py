"""The backend registry: names and their options become backend objects; an option a
backend does not take is refused, never silently dropped."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from privacy_gate.errors import InputError
from privacy_gate.training.backends import (
    BACKENDS,
    AutoBackend,
    BatchedBackend,
    SequentialBackend,
    make_backend,
    parse_backend_options,
)
from privacy_gate.training.ray_backend import RayBackend, RayOptions


def test_every_backend_name_is_registered_with_its_class() -> None:
    assert set(BACKENDS) == {"auto", "batched", "sequential", "ray"}
    assert make_backend() == AutoBackend()
    assert make_backend("batched", group_size=8) == BatchedBackend(group_size=8)
    assert make_backend("sequential", workers=3) == SequentialBackend(workers=3)
    options = RayOptions(models_per_task=2)
    assert make_backend("ray", ray=options) == RayBackend(options=options)
    for name in BACKENDS:
        assert make_backend(name).name == name


def test_a_backend_object_passes_through_and_carries_its_own_options() -> None:
    backend = SequentialBackend(workers=4)
    assert make_backend(backend) is backend
    with pytest.raises(InputError, match="travel with the backend"):
        make_backend(backend, workers=2)


@pytest.mark.parametrize(
    ("name", "options", "refused"),
    [
        ("batched", {"workers": 2}, "workers"),
        ("sequential", {"ray": RayOptions()}, "ray"),
        ("auto", {"ray": RayOptions()}, "ray"),
        ("ray", {"workers": 4}, "workers"),
    ],
)
def test_an_option_the_backend_does_not_take_is_refused(
    name: str, options: dict[str, object], refused: str
) -> None:
    with pytest.raises(InputError, match=rf"option '{refused}' does not apply to the '{name}'"):
        make_backend(name, **options)  # type: ignore[arg-type]


def test_an_unknown_backend_names_the_valid_ones() -> None:
    with pytest.raises(InputError, match=r"'backend' parameter .* one of \['auto', 'batched'"):
        make_backend("gpu-cluster")


@pytest.mark.parametrize("given", [["workers", 2], {1: 2}, "workers=2"])
def test_backend_options_must_be_a_mapping_by_name(given: object) -> None:
    """One check for audit.yaml, the callback and the evaluator (each passes its own
    ``backend_options`` through `parse_backend_options`)."""
    with pytest.raises(InputError, match="'backend_options' parameter of the callback"):
        parse_backend_options("auto", given, "the callback")


def test_an_option_left_none_takes_the_default() -> None:
    assert parse_backend_options("auto", None, "x") == {}
    assert parse_backend_options("auto", {"workers": None, "group_size": 4}, "x") == {
        "group_size": 4
    }

"""The report names the user's factory: through ``functools.partial`` (its keywords kept)
and through adapters that name what they wrap in ``__wrapped__``."""

from __future__ import annotations

import functools

from torch import nn

from privacy_gate.training.prepared import model_identity


def make_model(width: int = 3) -> nn.Module:
    return nn.Linear(width, 2)


class _Adapter:
    """An integration's wrapper (as the Hugging Face callback's logits adapter)."""

    def __init__(self, factory: functools.partial[nn.Module]) -> None:
        self.__wrapped__ = factory

    def __call__(self) -> nn.Module:
        return self.__wrapped__()


def test_partials_and_wrappers_name_the_users_factory() -> None:
    model = make_model(4)
    partial = functools.partial(make_model, width=4)
    for factory in (partial, _Adapter(partial), functools.partial(_Adapter(partial))):
        identity = model_identity(factory, model)
        assert identity["factory"] == f"{__name__}:make_model"
        assert identity["factory_args"] == {"width": 4}
    assert model_identity(_Adapter(partial), model)["architecture"] == [
        ["weight", [2, 4]], ["bias", [2]]
    ]  # fmt: skip


def test_a_partial_that_names_what_it_stands_for_is_named_by_it() -> None:
    """A partial over an internal caller (the Trainer's ``call_model_init``) that sets
    ``__wrapped__`` to the user's function is named after that function."""

    def call(owner: object) -> nn.Module:
        return make_model()

    internal = functools.partial(call, object())
    internal.__wrapped__ = make_model  # type: ignore[attr-defined]
    assert model_identity(internal, make_model())["factory"] == f"{__name__}:make_model"

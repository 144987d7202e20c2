"""``device``: auto takes the CPU where torch sees no GPU, a CUDA device that is not there
is an error naming the field (exit 2 from the CLI), and CUDA cases skip cleanly here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.training.batched import train_batched
from privacy_gate.training.device import resolve_device
from privacy_gate.training.job import parse_job
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.sequential import train_one

CUDA = torch.cuda.is_available()


def test_auto_takes_cuda_when_available_else_the_cpu() -> None:
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "CPU", "mps", ""])
def test_unknown_devices_are_named(value: str) -> None:
    with pytest.raises(InputError, match=r"'device' of the audit must be auto, cpu, cuda"):
        resolve_device(value)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_an_error(value: str) -> None:
    with pytest.raises(InputError, match=r"torch sees no CUDA device.*HINT: use device: auto"):
        resolve_device(value)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_audit_config_with_cuda_fails_up_front(tmp_path: Path) -> None:
    config = {"model": "m:f", "data": "d:f", "device": "cuda"}
    with pytest.raises((ConfigError, InputError), match="audit config"):
        parse_job(config, base=tmp_path)
    assert parse_job({**config, "device": "auto"}, base=tmp_path).device == "auto"


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cli_exits_2_for_cuda_without_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from privacy_gate.cli import main

    path = tmp_path / "audit.yaml"
    path.write_text("model: tiny_audit:make_model\ndata: tiny_audit:load_data\ndevice: cuda\n")
    assert main(["audit", "--config", str(path)]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def _conv() -> nn.Module:
    """No bias before BatchNorm: its true gradient is zero, and Adam would scale the
    rounding noise of that zero up to steps of the learning rate, which no two
    computations share (checked on the CPU: 0.02-0.07 apart after 2 epochs)."""
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(32, 3),
    )  # fmt: skip


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (benchmarks/gpu_check.sh runs this)")
@pytest.mark.parametrize("fast_path", [True, False], ids=["conv-path", "vmap-path"])
def test_batched_on_cuda_equals_train_one_on_cuda(fast_path: bool) -> None:
    for batched, want in _batched_and_separate(_conv, torch.device("cuda"), fast_path):
        assert next(batched.parameters()).device.type == "cuda"
        for name, value in want.state_dict().items():
            got = batched.state_dict()[name]
            if value.dtype == torch.int64:
                assert torch.equal(got, value), name
            else:
                torch.testing.assert_close(got, value, rtol=1e-3, atol=1e-4, msg=name)


def _lora_conv() -> nn.Module:
    """A pretrained conv (the same weights at every seed) with LoRA adapters, a new head."""
    peft = pytest.importorskip("peft")
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                        nn.Flatten(), nn.Linear(16, 3))  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net[0].parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    config = peft.LoraConfig(r=2, target_modules=["0"], modules_to_save=["4"],
                             init_lora_weights="gaussian")  # fmt: skip
    return peft.get_peft_model(net, config)  # type: ignore[no-any-return]


@pytest.fixture
def _full_float32() -> Iterator[None]:
    """TF32 off for the comparison: with it, cuDNN rounds the merged LoRA weight
    ``W + s * B @ A`` as a whole and PEFT's three convolutions separately, each about 1e-3
    from float64, so the two would not agree to the tolerance below."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (benchmarks/gpu_check.sh runs this)")
@pytest.mark.usefixtures("_full_float32")
@pytest.mark.parametrize("fast_path", [True, False], ids=["conv-path", "vmap-path"])
def test_batched_lora_on_cuda_equals_peft_fine_tunes_on_cuda(fast_path: bool) -> None:
    _lora_equivalence(torch.device("cuda"), fast_path)


def _lora_equivalence(device: torch.device, fast_path: bool) -> None:
    for batched, want in _batched_and_separate(_lora_conv, device, fast_path):
        assert next(batched.parameters()).device.type == device.type
        got, expected = dict(batched.named_parameters()), dict(want.named_parameters())
        trained = [n for n, p in want.named_parameters() if p.requires_grad]
        assert any("lora_B" in n for n in trained)
        for name in trained:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4, msg=name)


def _batched_and_separate(
    factory: Callable[[], nn.Module], device: torch.device, fast_path: bool
) -> list[tuple[nn.Module, nn.Module]]:
    """Three models trained batched on ``device``, each beside its own `train_one` run."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 1, 8, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(64, size, replace=False)) for size in (20, 30, 14)]
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=0.01)
    seeds = (1, 2, 3)
    models = train_batched(factory, inputs, labels, subsets, recipe, seeds=seeds,
                           fast_path=fast_path, device=device)  # fmt: skip
    return [
        (model, train_one(factory, inputs, labels, subset, recipe, seed=seed, device=device))
        for model, subset, seed in zip(models, subsets, seeds, strict=True)
    ]

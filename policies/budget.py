"""Spent and remaining epsilon, replayed from a verified ledger."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policies.accounting import compute_epsilon
from policies.ledger import SPEND, Ledger, LedgerEntry, VerificationReport
from policies.models import DPParameters, HospitalPolicy, StudyPolicy

# Relative gap above which a stored epsilon_after and the replay disagree.
_REPLAY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BudgetLine:
    """Epsilon spent and left for one study (hospital view) or hospital (hub view)."""

    name: str
    rounds: int
    accountant: str
    delta: float
    epsilon_spent: float
    """Replayed from the ledger's spends, never read from a stored total."""
    epsilon_limit: float
    last_recorded_epsilon: float | None
    """``epsilon_after`` of the last spend as written; differs from
    ``epsilon_spent`` only if the ledger was written by other code."""

    @property
    def epsilon_remaining(self) -> float:
        """Limit minus spent, never below zero."""
        return max(0.0, self.epsilon_limit - self.epsilon_spent)

    @property
    def replay_matches(self) -> bool:
        """Whether the stored epsilon of the last spend equals the replay."""
        if self.last_recorded_epsilon is None:
            return True
        return math.isclose(
            self.last_recorded_epsilon, self.epsilon_spent, rel_tol=_REPLAY_TOLERANCE
        )


@dataclass(frozen=True)
class BudgetReport:
    """Verified ledger and its budget lines."""

    verification: VerificationReport
    lines: list[BudgetLine]
    total: BudgetLine | None = None
    """Across all studies (hospital view only)."""


def _read_spends(
    path: Path, public_key: Ed25519PublicKey, party_id: str | None
) -> tuple[VerificationReport, list[LedgerEntry]]:
    verification = Ledger.verify(path, public_key, party_id=party_id)
    entries = Ledger.read_verified(path, public_key, party_id=party_id)
    return verification, [e for e in entries if e.kind == SPEND]


def _history(spends: Sequence[LedgerEntry]) -> list[DPParameters]:
    return [
        DPParameters(
            noise_multiplier=e.payload["noise_multiplier"],
            sample_rate=e.payload["sample_rate"],
            steps=e.payload["steps"],
            max_grad_norm=e.payload["max_grad_norm"],
        )
        for e in spends
    ]


def _conservative_epsilon(spends: Sequence[LedgerEntry]) -> tuple[float, str, float]:
    # Spends of one study share accountant and delta; if they do not, report
    # the largest epsilon over the accountants used, at the smallest delta.
    delta = min(float(e.payload["delta"]) for e in spends)
    accountants = sorted({str(e.payload["accountant"]) for e in spends})
    history = _history(spends)
    epsilon = max(compute_epsilon(history, delta, a) for a in accountants)
    return epsilon, "+".join(accountants), delta


def hospital_budget(
    path: str | Path, public_key: Ed25519PublicKey, policy: HospitalPolicy
) -> BudgetReport:
    """Verify a hospital's ledger and return its budget per study and in total.

    Raises:
        LedgerIntegrityError: the ledger fails verification.

    """
    verification, spends = _read_spends(Path(path), public_key, policy.hospital_id)
    studies = sorted({str(e.payload["study_id"]) for e in spends})
    lines = []
    for study_id in studies:
        study_spends = [e for e in spends if e.payload["study_id"] == study_id]
        epsilon, accountant, delta = _conservative_epsilon(study_spends)
        lines.append(
            BudgetLine(
                name=study_id,
                rounds=len(study_spends),
                accountant=accountant,
                delta=delta,
                epsilon_spent=epsilon,
                epsilon_limit=policy.max_epsilon_per_study,
                last_recorded_epsilon=float(study_spends[-1].payload["epsilon_after"]),
            )
        )
    total = BudgetLine(
        name="all studies",
        rounds=len(spends),
        accountant=policy.total_accountant,
        delta=policy.delta_for_total,
        epsilon_spent=compute_epsilon(
            _history(spends), policy.delta_for_total, policy.total_accountant
        ),
        epsilon_limit=policy.max_epsilon_total,
        last_recorded_epsilon=None,
    )
    return BudgetReport(verification=verification, lines=lines, total=total)


def hub_budget(
    path: str | Path, public_key: Ed25519PublicKey, study: StudyPolicy
) -> BudgetReport:
    """Verify the hub's ledger and return each hospital's budget in the study.

    Raises:
        LedgerIntegrityError: the ledger fails verification.

    """
    verification, spends = _read_spends(Path(path), public_key, None)
    lines = []
    for hospital_id in study.hospitals:
        mine = [
            e
            for e in spends
            if e.payload["study_id"] == study.study_id
            and e.payload.get("hospital_id") == hospital_id
        ]
        epsilon = compute_epsilon(_history(mine), study.delta, study.accountant)
        lines.append(
            BudgetLine(
                name=hospital_id,
                rounds=len(mine),
                accountant=study.accountant,
                delta=study.delta,
                epsilon_spent=epsilon,
                epsilon_limit=study.epsilon_budget_for(hospital_id),
                last_recorded_epsilon=(
                    float(mine[-1].payload["epsilon_after"]) if mine else None
                ),
            )
        )
    return BudgetReport(verification=verification, lines=lines)

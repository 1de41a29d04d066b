"""The sigmoid DPO loss on per-sample flow-matching errors, MindSpeed-MM's SoRA DPO trainer's formula.

Each clip's "log-likelihood" is ``-loss_beta · t · mse`` (t the training timestep 1000 σ, mse the mean squared
velocity error of that clip); chosen and rejected clips of a pair share noise and timestep. With
``Δ = (actor_chosen - actor_rejected) - (reference_chosen - reference_rejected)`` the pair's loss is
``-(1 - ε) log σ(β Δ) - ε log σ(-β Δ)`` (β ``dpo_beta``, ε ``dpo_label_smoothing``), times the pair weight
``(weight_beta / p)^weight_alpha`` from the score histogram, plus ``pref_ftx`` times the actor's chosen error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error of each sample [B] (over every other dim), in fp32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def log_likelihood(mse: torch.Tensor, timesteps: torch.Tensor, loss_beta: float) -> torch.Tensor:
    """The DPO stand-in for a clip's log-likelihood: ``-loss_beta · t · mse`` [B]."""
    return -loss_beta * timesteps.float() * mse


@dataclass(frozen=True)
class PreferenceTerms:
    """Per-pair pieces of the loss [B]: the DPO losses and both rewards."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def sigmoid_dpo(
    actor_chosen: torch.Tensor,
    actor_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceTerms:
    """The (label-smoothed, cDPO) sigmoid DPO loss of each pair and the implicit rewards β (actor - reference)."""
    delta = (actor_chosen - actor_rejected) - (reference_chosen - reference_rejected)
    losses = (-F.logsigmoid(beta * delta) * (1 - label_smoothing)
              - F.logsigmoid(-beta * delta) * label_smoothing)
    chosen = beta * (actor_chosen - reference_chosen).detach()
    rejected = beta * (actor_rejected - reference_rejected).detach()
    return PreferenceTerms(losses, chosen, rejected)

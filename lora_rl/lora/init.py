"""Initialisation of the A and B matrices (PEFT/Automodel/Megatron-Bridge conventions)."""

from __future__ import annotations

import math

import torch


def init_weight(weight: torch.Tensor, method: str, rank: int) -> None:
    with torch.no_grad():
        if method == "zero":
            weight.zero_()
        elif method == "xavier":
            torch.nn.init.xavier_normal_(weight)
        elif method == "uniform":
            # PEFT's default: kaiming-uniform with a = sqrt(5) (nn.Linear's own init).
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        elif method == "normal":
            torch.nn.init.normal_(weight, std=1.0 / rank)
        elif method == "kaiming":
            torch.nn.init.kaiming_normal_(weight)
        else:
            raise ValueError(f"unknown LoRA init method {method!r}")

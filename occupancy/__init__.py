"""Exact and sampled tabular teams: the theory engine (THEORY.md sections 1-2)."""

from occupancy.mdp import TeamMDP
from occupancy.exact import Evaluation, evaluate, evaluate_stage

__all__ = ["TeamMDP", "Evaluation", "evaluate", "evaluate_stage"]

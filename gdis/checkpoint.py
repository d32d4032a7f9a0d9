"""gdis checkpoints: one format for resuming, for the supervised state at burn-in and for finished networks.

A checkpoint is a dict saved with ``torch.save`` (loaded with ``weights_only=True``) holding
``format``, ``step``, ``method``, ``category_ids``, the ``student`` and ``ema_teacher`` state dicts,
``train_config`` (the run's train section as sorted JSON) and, while training, the optimiser,
scheduler, RNG states and log records. Files are written atomically: a half-written file never
takes a finished one's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gdis.io import atomic_path
from gdis.models import build_model
from gdis.models.weights import load_state_dict_file

CHECKPOINT_FORMAT = "gdis-checkpoint-1"
# A supervised run's full training state at step train.burn_in: where standard_burnin continues from.
BURN_IN_CHECKPOINT = "burn_in.pt"
LAST_CHECKPOINT = "last.pt"
FINAL_CHECKPOINT = "model_final.pt"
TRAINING_STATE = ("optimizer", "scheduler", "rng_states", "log_records")  # dropped from model_final.pt


def train_config_key(train: dict) -> str:
    """The train section as a checkpoint records it: a resumed or continued run must have the same."""
    return json.dumps(train, sort_keys=True)


def save_checkpoint(path: str | Path, **state) -> None:
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        try:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
        except RuntimeError as error:  # torch reports a failed write (disk full) as a RuntimeError around the OSError
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def load_checkpoint(path: str | Path) -> dict:
    state = load_state_dict_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a gdis checkpoint")
    return state


def load_network(path: str | Path, which: str, model_config: dict):
    """The student or EMA teacher of a finished gdis checkpoint, ready for inference, with the checkpoint."""
    state = load_checkpoint(path)
    weights = state.get(which)
    if weights is None:
        raise ValueError(f"checkpoint {path} holds no '{which}' network (method {state['method']})")
    model = build_model(model_config, len(state["category_ids"]), load_weights=False)
    model.load_state_dict(weights)
    return model, state


def resumable(state: dict, method: str, train: dict) -> bool:
    """Whether a work-in-progress checkpoint was written by this method with this training config."""
    return state["method"] == method and state["train_config"] == train_config_key(train)


def check_burn_in_checkpoint(state: dict, path: str | Path, train: dict, category_ids: list[int]) -> None:
    """standard_burnin continues the supervised run of the same split, config and categories from step burn_in."""
    burn_in = train["burn_in"]
    found = (state["method"], state["step"], state["train_config"], state["category_ids"])
    if found != ("supervised", burn_in, train_config_key(train), category_ids):
        raise ValueError(f"{path} is not the step-{burn_in} checkpoint of a supervised run with this training "
                         f"config and categories (it has method {state['method']}, step {state['step']})")


def check_teacher(state: dict, path: str | Path, category_ids: list[int]) -> None:
    if state["category_ids"] != category_ids:
        raise ValueError(f"teacher {path} was trained on other categories")

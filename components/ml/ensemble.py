"""A seed ensemble's members, trained apart by components.stages.train, written as one model.

`model.pt` holds every member's weights (components.ml.models.save_model), `model.json` says
`members`; `history.json` holds every member's epochs (field `member`); `training.json` the totals,
the ensemble's validation AUC (`best_val_auc`; `best_epoch` is each member's own, under `members`)
and each member's summary (`members`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from components.data.artifacts import HISTORY_FILE, TRAINING_FILE
from components.data.prepared import load_split
from components.ml.metrics import score_auc
from components.ml.models import load_networks, save_model, spec_predictor
from components.ml.runtime import predict_probs

# training.json figures that add up over members; rates are weighted by each member's training time.
_SUMMED = ("parameters", "epochs_planned", "epochs_run", "seconds", "train_seconds", "this_call_seconds")
_RATES = ("images_per_second", "data_fraction")


def combine_members(folders: list[Path], data_dir: Path, out_dir: Path) -> float:
    """Write the members trained into `folders` (each a train output) as one model into `out_dir`;
    returns the ensemble's validation AUC (its members' probabilities averaged)."""
    loaded = [load_networks(folder) for folder in folders]  # each member folder holds one network
    networks = [members[0] for members, _ in loaded]
    spec = replace(loaded[0][1], members=len(networks))
    save_model(networks, spec, out_dir)
    x_val, y_val, _ = load_split(data_dir, "val")
    val_auc = score_auc(y_val, predict_probs(spec_predictor(networks, spec), x_val))
    histories = [json.loads((folder / HISTORY_FILE).read_text()) for folder in folders]
    records = [{**record, "member": i} for i, history in enumerate(histories) for record in history]
    (out_dir / HISTORY_FILE).write_text(json.dumps(records, indent=2))
    (out_dir / TRAINING_FILE).write_text(json.dumps(ensemble_summary(folders, val_auc), indent=2))
    return val_auc


def ensemble_summary(folders: list[Path], val_auc: float) -> dict[str, Any]:
    """training.json of an ensemble from its members' (in `folders`)."""
    members = [json.loads((folder / TRAINING_FILE).read_text()) for folder in folders]
    train_seconds = sum(m["train_seconds"] for m in members)
    return {
        **{k: members[0][k] for k in ("family", "device", "threads", "processes")},
        **{k: sum(m[k] for m in members) for k in _SUMMED},
        **{k: sum(m[k] * m["train_seconds"] for m in members) / max(train_seconds, 1e-9) for k in _RATES},
        "ensemble": len(members),
        "best_epoch": None,
        "best_val_auc": val_auc,
        "stopped": ", ".join(sorted({m["stopped"] for m in members})),
        "resumed_after_epoch": max(m["resumed_after_epoch"] for m in members),
        "members": members,
    }

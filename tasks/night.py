"""The night, described once: its steps, the records each takes and hands on, and the order they run in.

Every step is a plain function from small records (paths, a fingerprint, counts) to a small record: the ones
defined here adapt the snapshot to the work in ``tasks/``; ``fit_model`` and ``evaluate_slice`` are that work
itself. The functions below the steps (``fit_fold``, ``evaluate_night``, ``train_night``) are the night's
graph; a :class:`Steps` runs them. :class:`InProcess` calls each step here, one after another (``recsys
evaluate``, ``recsys train``, the quality benchmark's folds through :func:`fit_tuned`); the nightly flow hands
the same steps to Prefect as cached tasks on its task runner (``flows/nightly.py``), so there is one graph to
change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from models.base import LAST_ENCODING
from models.registry import model_class
from recsys.settings import Settings
from tasks.evaluate import (
    Evaluation,
    EvaluationFold,
    ItemColdFold,
    SliceMetrics,
    evaluate_slice,
    split_step,
    write_evaluation_step,
)
from tasks.features import FeatureSet, production_features
from tasks.snapshot import FEATURES, Snapshot, data_folder
from tasks.split import ValidationFold
from tasks.train import (
    FittedModel,
    TrainedModels,
    components_of,
    fit_arguments,
    fit_model,
    fit_stages,
    format_training,
    needed,
)

R = TypeVar("R")

# ---------------------------------------------------------------------------------------------------------
# The steps.


def build_features(settings: Settings, run_id: str, snap: Snapshot) -> FeatureSet:
    """The production features (everything loaded), stored by the snapshot's fingerprint and in the warehouse."""
    return production_features(settings, run_id, snap.frames(), data_folder(settings, FEATURES, snap.fingerprint))


def split_for_evaluation(settings: Settings, run_id: str, snap: Snapshot) -> EvaluationFold:
    """Cold users, warm users' latest interactions, validation users and the item-cold fold, split once."""
    return split_step(settings, snap.frames(), settings.reports_dir / run_id)


def write_evaluation(settings: Settings, run_id: str, snap: Snapshot, fold: EvaluationFold, parts: list[SliceMetrics],
                     fitted: dict[str, str], published: str) -> Evaluation:
    """The metrics stored, the report written (``published``'s answer first, the gate beside it)."""
    return write_evaluation_step(settings, run_id, fold, parts, fitted, settings.reports_dir / run_id,
                                          gate=snap.gate(), published=published, carry=carry_over(fitted))


STEPS = (build_features, split_for_evaluation, fit_model, evaluate_slice, write_evaluation)

# ---------------------------------------------------------------------------------------------------------
# How steps are run.


class Steps(Protocol):
    """Runs the night's steps: ``one`` a single call where the graph waits for it, ``many`` independent calls
    (fits of a stage, slices) that may run side by side; both return the steps' records in order."""

    def one(self, step: Callable[..., R], **call: Any) -> R: ...

    def many(self, step: Callable[..., R], calls: list[dict[str, Any]]) -> list[R]: ...


class InProcess:
    """Each step called in this process, one after another, nothing cached."""

    def one(self, step: Callable[..., R], **call: Any) -> R:
        return step(**call)

    def many(self, step: Callable[..., R], calls: list[dict[str, Any]]) -> list[R]:
        return [step(**call) for call in calls]


# ---------------------------------------------------------------------------------------------------------
# The graph.


def fit_fold(steps: Steps, settings: Settings, names: list[str], train_path: str, feats: FeatureSet, folder: str,
             fold: str, **shared) -> dict[str, FittedModel]:
    """Each model fitted once on ``train_path``: the single models side by side, then the blends of them.
    ``shared``: ``validation``, ``weights``, ``warm_from``, ``last_blend`` (see :func:`tasks.train.fit_arguments`)."""
    fitted: dict[str, FittedModel] = {}
    common = {"settings": settings, "train": train_path, "features": feats, "folder": folder, "fold": fold}
    for stage in fit_stages(names):
        calls = [{**common, **fit_arguments(name, fitted, **shared)} for name in stage]
        fitted.update(zip(stage, steps.many(fit_model, calls), strict=True))
    return fitted


def fit_evaluation_fold(steps: Steps, settings: Settings, run_id: str, snap: Snapshot, names: list[str],
                        last_blend: str | None = None) -> tuple[EvaluationFold, dict[str, FittedModel]]:
    """Split once; each model fitted once on the evaluation fold, a blend with the weights tuned on the tuning
    fold carved from it (its components fitted there first), as production is fitted: the models that can
    (the two-tower, ALS) continue the tuning fold's fits, which saw part of the evaluation fold's training and
    nothing of its truth, as production continues the evaluation fold's (``last_blend``: last night's published
    blend, which the tuning keeps where tonight's is not significantly better)."""
    fold = steps.one(split_for_evaluation, settings=settings, run_id=run_id, snap=snap)
    folder = settings.reports_dir / run_id / "models"
    fitted, _ = fit_tuned(steps, settings, names, fold.train, fold.features, str(folder), "evaluation fold",
                          tuning=fold.tuning, tuning_features=fold.tuning_features, continue_fits=True,
                          last_blend=last_blend)
    return fold, fitted


def evaluate_night(steps: Steps, settings: Settings, run_id: str, snap: Snapshot, names: list[str],
                   publish_model: str, last_blend: str | None = None) -> Evaluation:
    """The evaluation fold's fits and the item-cold fold's; every slice scored by every model; the report.
    ``last_blend``: see :func:`fit_evaluation_fold`."""
    fold, fitted = fit_evaluation_fold(steps, settings, run_id, snap, names, last_blend)
    paths = {name: fit.path for name, fit in fitted.items()}
    folder = settings.reports_dir / run_id
    slices = {name: {name: paths[name] for name in names} for name in fold.slices}
    if fold.item_cold is not None:
        # The item-cold fold: every model and the baselines, on the evaluation fold's training less the new items.
        # A hybrid takes the evaluation fold's tuned blend: the held-out items' interactions are the truth,
        # nothing is tuned on them again. (Each model is fitted from scratch here: the two-tower continuing the
        # item-cold fit on the evaluation fold, which is sound, cost new users 1-4 % and the hybrid its lead over
        # segment popularity at 1-5 known items on ML-100k; see docs/design.md.)
        ic, ic_names = fold.item_cold, ItemColdFold.models(names)
        ic_fitted = fit_fold(steps, settings, ic_names, ic.train, ic.features, str(folder / "models-item-cold"),
                             "item-cold fold", weights=carry_over(paths)["weights"])
        slices[ic.slice] = {name: ic_fitted[name].path for name in ic_names}
    parts = steps.many(evaluate_slice, [
        {"settings": settings, "run_id": run_id, "fold": fold, "slice_name": name, "models": models,
         "folder": str(folder / "metrics")} for name, models in slices.items()])
    return steps.one(write_evaluation, settings=settings, run_id=run_id, snap=snap, fold=fold, parts=parts,
                     fitted=paths, published=publish_model)


def carry_over(fitted: dict[str, str]) -> dict[str, Any]:
    """What the production fit takes from the evaluation fold's fits (by path): the hybrid's tuned blend
    (``weights``) and the fits to continue from (``warm_from``: the two-tower's)."""
    tuned = [file for name, path in fitted.items() if (file := model_class(name).tuned_file(Path(path)))]
    return {"weights": str(tuned[0]) if tuned else None,
            "warm_from": {name: path for name, path in fitted.items() if model_class(name).can_warm_start()}}


def train_night(steps: Steps, settings: Settings, run_id: str, snap: Snapshot, feats: FeatureSet, names: list[str],
                weights: str | None, warm_from: dict[str, str]) -> TrainedModels:
    """The production fit on everything loaded, with what :func:`carry_over` took from the evaluation fold."""
    fitted = fit_fold(steps, settings, names, str(snap.path("interactions")), feats, str(settings.models_dir / run_id),
                      "production", weights=weights, warm_from=warm_from)
    paths = {name: fitted[name].path for name in needed(names)}
    print(format_training(paths))
    LAST_ENCODING.forget()  # the night's last fit is done: publishing does not carry the fold's encoding
    return TrainedModels(str(Path(paths[names[-1]]).parent), paths)


def fit_tuned(steps: Steps, settings: Settings, names: list[str], train: str, feats: FeatureSet, folder: str,
              fold: str, tuning: str | None = None, tuning_features: FeatureSet | None = None,
              continue_fits: bool = True, last_blend: str | None = None,
              ) -> tuple[dict[str, FittedModel], dict[str, FittedModel]]:
    """One fold fitted the way the night reaches production: the blends among ``names`` fitted first on a tuning
    fold (``tuning``: a saved :class:`~tasks.split.ValidationFold` carved from ``train``, with its features),
    then every model on ``train`` with what :func:`carry_over` takes from those fits: the tuned blend and, with
    ``continue_fits``, the fits to continue; ``last_blend``: last night's blend, which the tuning keeps where
    tonight's is not significantly better. For callers with one fold (the quality benchmark's protocols).
    Returns the fits on ``train`` and the tuning fold's."""
    blends = [name for name in names if components_of(name)]
    tuned: dict[str, FittedModel] = {}
    if blends and tuning is not None and tuning_features is not None:
        tuned = fit_fold(steps, settings, blends, str(ValidationFold.train_path(Path(tuning))), tuning_features,
                         str(Path(folder) / "tuning"), f"{fold}, tuning fold", validation=tuning,
                         last_blend=last_blend)
    carried = carry_over({name: fit.path for name, fit in tuned.items()})
    if not continue_fits:
        carried["warm_from"] = {}
    return fit_fold(steps, settings, names, train, feats, folder, fold, **carried), tuned

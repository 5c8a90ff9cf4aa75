"""The resumable training state on its own: best epoch across interruptions, locking, identity."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError, UserError
from pipeline.training.checkpoints import EpochCheckpoints, WorkFolder

IDENTITY = {"seed": "1", "augmentation.name": "none", "train.epochs": "10"}


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def run_epochs(folder: WorkFolder, state, model: keras.Model, accuracies: dict[int, float]) -> None:
    """Finish the given epochs (1-based) with the given val_accuracy; weights = the epoch number."""
    callback = EpochCheckpoints(folder, state, patience=100, images_per_epoch=10)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, accuracy in accuracies.items():
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        callback.on_epoch_begin(epoch - 1)
        callback.on_epoch_end(epoch - 1, {"val_accuracy": accuracy, "loss": 1.0 / epoch})


def test_the_best_epoch_survives_an_interruption_and_its_weights_are_the_model(tmp_path):
    folder = WorkFolder(tmp_path, IDENTITY)
    state = folder.open(resume=False)
    run_epochs(folder, state, tiny_model(), {1: 0.5, 2: 0.9, 3: 0.6})
    folder.close(finished=False)  # the process dies here

    again = WorkFolder(tmp_path, {**IDENTITY, "train.epochs": "20"})  # more epochs: the same training
    state = again.open(resume=True)
    assert (state.epochs_done, state.best_epoch, state.best_val_accuracy) == (3, 2, 0.9)
    model = tiny_model()
    run_epochs(again, state, model, {4: 0.7, 5: 0.8})
    assert (state.best_epoch, state.best_val_accuracy) == (2, 0.9)  # max(before, after)
    assert [row["val_accuracy"] for row in state.history] == [0.5, 0.9, 0.6, 0.7, 0.8]
    again.load_weights(model, state.best_weights)
    assert all(np.all(w == 2) for w in model.get_weights())  # epoch 2's weights
    again.close(finished=True)
    assert not again.path.exists()


def test_a_resume_with_another_config_names_the_differing_keys(tmp_path):
    folder = WorkFolder(tmp_path, IDENTITY)
    run_epochs(folder, folder.open(resume=False), tiny_model(), {1: 0.5})
    folder.close(finished=False)
    other = WorkFolder(tmp_path, {**IDENTITY, "seed": "7", "augmentation.name": "lesson"})
    with pytest.raises(ConfigError) as error:
        other.open(resume=True)
    assert "augmentation.name: none there, lesson now" in str(error.value) and "seed: 1 there, 7 now" in str(
        error.value
    )
    # in a sweep (refuse_other=False) the job that never started simply starts, and leaves the other alone
    assert other.open(resume=True, refuse_other=False).epochs_done == 0
    other.close(finished=True)
    assert folder.open(resume=True).epochs_done == 1
    folder.close(finished=True)


def test_the_same_configuration_twice_at_once_is_refused(tmp_path):
    first = WorkFolder(tmp_path, IDENTITY)
    first.open(resume=False)
    with pytest.raises(UserError, match="Another training of this same configuration is running"):
        WorkFolder(tmp_path, IDENTITY).open(resume=False)
    different = WorkFolder(tmp_path, {**IDENTITY, "seed": "2"})  # another config: its own folder, no conflict
    different.open(resume=False)
    assert different.path != first.path
    first.close(finished=True)
    different.close(finished=True)


def test_a_kill_in_mid_write_leaves_the_previous_state(tmp_path):
    folder = WorkFolder(tmp_path, IDENTITY)
    state = folder.open(resume=False)
    run_epochs(folder, state, tiny_model(), {1: 0.5, 2: 0.6})
    folder.close(finished=False)
    (folder.path / ".state.tmp-1234-5678.json").write_text('{"epochs_do')  # a write the kill cut short
    (folder.path / ".last-e0003.tmp-1234-5678.weights.h5").write_bytes(b"")
    state = WorkFolder(tmp_path, IDENTITY).open(resume=True)
    assert state.epochs_done == 2 and state.best_epoch == 2
    assert sorted(p.name for p in folder.path.iterdir()) == sorted(
        ["lock", "identity.json", "state.json", state.last_weights, state.best_weights]
    )


@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine"])
def test_a_resume_with_more_epochs_is_recorded_or_refused_by_schedule(tmp_path, schedule):
    from pipeline.config.compose import compose
    from pipeline.training.fitting import refuse_a_changed_schedule

    started = {**IDENTITY, "train.epochs": "12", "train.lr_schedule": schedule}
    folder = WorkFolder(tmp_path, started)
    state = folder.open(resume=False)
    run_epochs(folder, state, tiny_model(), {1: 0.5, 2: 0.6, 3: 0.7})  # then killed
    folder.close(finished=False)

    longer = WorkFolder(tmp_path, {**started, "train.epochs": "14"})
    assert longer.open(resume=True).epochs_done == 3
    assert longer.started_as["train.epochs"] == "12"  # identity.json keeps what it started as
    assert longer.resumed_with() == {"train.epochs": "14"}
    config = compose([f"train.lr_schedule={schedule}", "train.epochs=14", "train.resume=true"])
    if schedule == "constant":
        refuse_a_changed_schedule(longer, config.train)  # the same training as 14 epochs from the start
    else:
        with pytest.raises(ConfigError, match="resume with train.epochs=12, or start afresh"):
            refuse_a_changed_schedule(longer, config.train)
    longer.close(finished=False)


def test_only_the_newest_best_and_last_weights_stay_on_disk(tmp_path):
    folder = WorkFolder(tmp_path, IDENTITY)
    state = folder.open(resume=False)
    run_epochs(folder, state, tiny_model(), {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.65})  # improved at 1, 2 and 3
    weights = sorted(p.name for p in folder.path.glob("*.weights.h5"))
    assert weights == ["best-e0003.weights.h5", "last-e0004.weights.h5"]
    folder.close(finished=False)

"""Atomic checkpoints: a crash while saving leaves the previous checkpoint usable."""

import os

import torch
from accelerate import Accelerator

from training.checkpoint import Progress, latest_checkpoint, load_checkpoint, prune_training_state, save_checkpoint
from training.loop import TrainSettings


def _run(accelerator: Accelerator):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    return model, optimizer, progress


def _train_step(model, optimizer) -> None:
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_checkpoint_keeps_the_previous_one_until_the_new_one_is_complete(tmp_path):
    settings = TrainSettings(model_path="m", data_config="d", output_dir=str(tmp_path))
    accelerator = Accelerator(cpu=True)
    model, optimizer, progress = _run(accelerator)
    for step in (1, 2):
        _train_step(model, optimizer)
        progress.step = step
        save_checkpoint(accelerator, str(tmp_path), step, settings)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000002"]
    saved = model.weight.detach().clone()
    # A crash in the middle of saving step 3: a partial temporary folder, `latest` untouched.
    os.makedirs(tmp_path / "checkpoints" / "step-00000003.tmp")
    (tmp_path / "checkpoints" / "step-00000003.tmp" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000002")
    restarted = Accelerator(cpu=True)
    model, optimizer, progress = _run(restarted)
    assert load_checkpoint(restarted, str(tmp_path)).endswith("step-00000002")
    assert progress.step == 2 and torch.equal(model.weight, saved)
    save_checkpoint(restarted, str(tmp_path), 3, settings)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000003"]
    assert os.path.isfile(tmp_path / "checkpoints" / "step-00000003" / "settings.json")


def test_prune_training_state_keeps_only_the_settings_of_the_newest_checkpoint(tmp_path):
    settings = TrainSettings(model_path="m", data_config="d", output_dir=str(tmp_path), max_steps=5)
    accelerator = Accelerator(cpu=True)
    model, optimizer, progress = _run(accelerator)
    _train_step(model, optimizer)
    folder = save_checkpoint(accelerator, str(tmp_path), 1, settings)
    assert len(os.listdir(folder)) > 1  # weights, optimizer, RNG and settings
    prune_training_state(str(tmp_path))
    assert os.listdir(folder) == ["settings.json"] and latest_checkpoint(str(tmp_path)) == folder
    assert '"max_steps": 5' in open(os.path.join(folder, "settings.json")).read()
    prune_training_state(str(tmp_path / "no-run-here"))  # a folder without checkpoints: nothing to do

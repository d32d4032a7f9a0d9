"""The trainer on a micro dataset: burn-in switch, resume after a kill, non-finite loss."""

from __future__ import annotations

import pytest
import torch

from gdis import distill
from gdis import trainer as trainer_module
from gdis.checkpoint import load_checkpoint
from gdis.splits import write_split
from gdis.trainer import Trainer, TrainingError
from tests.conftest import split_trainer


@pytest.fixture
def split_dir(micro_dataset, tmp_path):
    write_split(micro_dataset / "annotations" / "train.json", tmp_path / "split", 25, fold=1, seed=0)
    return tmp_path / "split"


def _trainer(config, method, split_dir, micro_dataset, out_dir, teacher=None, burn_in_checkpoint=None):
    torch.set_num_threads(1)
    return split_trainer(config, method, split_dir, micro_dataset / "train", out_dir, teacher=teacher,
                         burn_in_checkpoint=burn_in_checkpoint)


@pytest.fixture
def supervised_checkpoint(micro_config, split_dir, micro_dataset, tmp_path):
    _trainer(micro_config, "supervised", split_dir, micro_dataset, tmp_path / "sup").run()
    return tmp_path / "sup" / "model_final.pt"


def test_guided_burn_in_switch(micro_config, split_dir, micro_dataset, supervised_checkpoint, tmp_path, monkeypatch):
    """Pre-trained teacher before burn_in; teacher := student exactly at burn_in; EMA after every later step."""
    burn_in = micro_config["train"]["burn_in"]
    trainer = _trainer(micro_config, "guided_distillation", split_dir, micro_dataset, tmp_path / "gd",
                       teacher=supervised_checkpoint)
    pretrained = load_checkpoint(supervised_checkpoint)["student"]
    events = []
    real_update = distill.ema_update

    def spy(teacher, student, decay):
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        real_update(teacher, student, decay)
        events.append((trainer.iteration, decay, before, {k: v.clone() for k, v in teacher.state_dict().items()},
                       {k: v.clone() for k, v in student.state_dict().items()}))

    def pseudo_label_spy(images, image_ids):
        events.append((trainer.iteration, "pseudo", {k: v.clone() for k, v in trainer.teacher.state_dict().items()}))
        return Trainer._pseudo_label(trainer, images, image_ids)

    monkeypatch.setattr(trainer_module.distill, "ema_update", spy)
    monkeypatch.setattr(trainer, "_pseudo_label", pseudo_label_spy)
    trainer.run()

    pseudo_steps = [e for e in events if e[1] == "pseudo"]
    updates = [e for e in events if e[1] != "pseudo"]
    assert [e[0] for e in pseudo_steps] == list(range(micro_config["train"]["iterations"]))
    for step, _, teacher_state in pseudo_steps[:burn_in]:
        assert all(torch.equal(teacher_state[k], pretrained[k]) for k in pretrained), f"teacher changed at {step}"
    decays = [(step, decay) for step, decay, *_ in updates]
    ema = micro_config["train"]["ema_decay"]
    iterations = micro_config["train"]["iterations"]
    assert decays == [(burn_in, 0.0)] + [(step, ema) for step in range(burn_in, iterations)]
    _, _, _, after_copy, student_at_copy = updates[0]
    assert all(torch.equal(after_copy[k], student_at_copy[k]) for k in after_copy)
    final = load_checkpoint(tmp_path / "gd" / "model_final.pt")
    assert final["ema_teacher"] is not None and final["step"] == iterations


def test_killed_run_resumes_to_identical_weights(micro_config, split_dir, micro_dataset, tmp_path, monkeypatch):
    micro_config["train"]["checkpoint_period"] = 2
    _trainer(micro_config, "standard_burnin", split_dir, micro_dataset, tmp_path / "straight").run()

    interrupted = _trainer(micro_config, "standard_burnin", split_dir, micro_dataset, tmp_path / "resumed")
    original_step = interrupted.step

    def die_at_step_three(*args):
        if interrupted.iteration == 3:
            raise KeyboardInterrupt("killed")
        return original_step(*args)

    monkeypatch.setattr(interrupted, "step", die_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert (tmp_path / "resumed" / "work" / "last.pt").exists()
    assert not (tmp_path / "resumed" / "model_final.pt").exists()

    _trainer(micro_config, "standard_burnin", split_dir, micro_dataset, tmp_path / "resumed").run()
    straight = load_checkpoint(tmp_path / "straight" / "model_final.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "model_final.pt")
    for network in ("student", "ema_teacher"):
        for key, value in straight[network].items():
            assert torch.allclose(value.float(), resumed[network][key].float(), atol=1e-6), (network, key)
    assert not (tmp_path / "resumed" / "work").exists()
    log_steps = [line for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert len(log_steps) == micro_config["train"]["iterations"]


def test_non_finite_loss_stops_with_step_and_term(micro_config, split_dir, micro_dataset, tmp_path, monkeypatch):
    trainer = _trainer(micro_config, "supervised", split_dir, micro_dataset, tmp_path / "nan")
    original = trainer.student.losses

    def poisoned(images, targets):
        losses = original(images, targets)
        if trainer.iteration == 1:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.student, "losses", poisoned)
    with pytest.raises(TrainingError, match=r"step 1: non-finite loss term\(s\) \{'loss_supervised/loss_mask': nan\}"):
        trainer.run()
    assert not (tmp_path / "nan" / "model_final.pt").exists()


def test_guided_distillation_requires_teacher(micro_config, split_dir, micro_dataset, tmp_path):
    with pytest.raises(ValueError, match="guided_distillation needs --teacher"):
        _trainer(micro_config, "guided_distillation", split_dir, micro_dataset, tmp_path / "x")


def test_standard_burnin_continues_the_supervised_run(micro_config, split_dir, micro_dataset, supervised_checkpoint,
                                                     tmp_path, monkeypatch):
    """The supervised run saves its state at burn_in; standard_burnin starts there and copies the student at once."""
    burn_in, iterations = micro_config["train"]["burn_in"], micro_config["train"]["iterations"]
    saved = load_checkpoint(supervised_checkpoint.parent / "burn_in.pt")
    assert (saved["method"], saved["step"]) == ("supervised", burn_in)
    assert not (supervised_checkpoint.parent / "work").exists()

    trainer = _trainer(micro_config, "standard_burnin", split_dir, micro_dataset, tmp_path / "sb",
                       burn_in_checkpoint=supervised_checkpoint.parent / "burn_in.pt")
    trained_steps = []
    original_step = trainer.step

    def spy(*batches):
        if not trained_steps:
            student = trainer.student.state_dict()
            assert all(torch.equal(student[k], saved["student"][k]) for k in student)
        trained_steps.append(trainer.iteration)
        return original_step(*batches)

    monkeypatch.setattr(trainer, "step", spy)
    trainer.run()
    assert trained_steps == list(range(burn_in, iterations))
    final = load_checkpoint(tmp_path / "sb" / "model_final.pt")
    assert final["ema_teacher"] is not None and final["step"] == iterations
    assert len((tmp_path / "sb" / "train_log.jsonl").read_text().splitlines()) == iterations


def test_burn_in_checkpoint_must_match_the_training_config(micro_config, split_dir, micro_dataset,
                                                           supervised_checkpoint, tmp_path):
    micro_config["train"]["lr"] *= 2
    trainer = _trainer(micro_config, "standard_burnin", split_dir, micro_dataset, tmp_path / "sb",
                       burn_in_checkpoint=supervised_checkpoint.parent / "burn_in.pt")
    with pytest.raises(ValueError, match=r"burn_in\.pt is not the step-2 checkpoint of a supervised run"):
        trainer.run()


def test_student_and_teacher_are_evaluated_every_eval_period(micro_config, split_dir, micro_dataset,
                                                             supervised_checkpoint, tmp_path):
    """train.eval_period: val mask AP of the student, and of the teacher giving the pseudo-labels, in the log."""
    micro_config["train"].update(eval_period=2, log_period=1)
    trainer = split_trainer(micro_config, "guided_distillation", split_dir, micro_dataset / "train", tmp_path / "gd",
                            teacher=supervised_checkpoint, val_annotations=micro_dataset / "annotations" / "val.json",
                            val_images=micro_dataset / "val")
    trainer.run()
    records = {record["step"]: record for record in trainer.log_records}
    evaluated = sorted(step for step, record in records.items() if "val_student_mask_AP75" in record)
    assert evaluated == [2, 4]
    assert all(0 <= records[step][f"val_{network}_{metric}"] <= 100 for step in evaluated
               for network in ("student", "teacher") for metric in ("mask_AP", "mask_AP75"))
    with pytest.raises(ValueError, match="train.eval_period is 2: give the val set too"):
        split_trainer(micro_config, "supervised", split_dir, micro_dataset / "train", tmp_path / "x")

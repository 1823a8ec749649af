"""Checkpoints: bad steps, foreign names, stray pointers, corrupt state.json; folder modes."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from sdegen.training import latest_checkpoint, load_checkpoint, save_checkpoint


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


@pytest.mark.parametrize("step", [-1, 2.0, True, "3", None])
def test_save_refuses_a_step_that_is_not_an_int_ge_0(tmp_path, step):
    with pytest.raises(ValueError, match=re.escape(f"step must be an integer >= 0, got {step!r}")):
        save_checkpoint(tmp_path, step, _model())
    assert list(tmp_path.iterdir()) == []  # nothing written, no pointer
    save_checkpoint(tmp_path, 1, _model())  # and later saves still work
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001"


def test_foreign_names_matching_ckpt_star_are_ignored_and_kept(tmp_path):
    foreign = ["ckpt-notes.txt", "ckpt-old-run", "ckpt--0000001", "ckpt-00000001-x"]
    for name in foreign:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("mine")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _model(), keep=2)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000003"
    names = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    assert names == sorted([*foreign, "ckpt-00000002", "ckpt-00000003"])
    assert (tmp_path / "ckpt-notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "pointer",
    ["../other/ckpt-00000001", "ABSOLUTE", "ckpt-00000001/../../other/ckpt-00000001", "ckpt--1"],
)
def test_latest_pointing_outside_the_run_folder_is_refused(tmp_path, pointer):
    other = save_checkpoint(tmp_path / "other", 1, _model())  # a complete checkpoint elsewhere
    run = tmp_path / "run"
    save_checkpoint(run, 1, _model())
    if pointer == "ABSOLUTE":
        pointer = str(other)
    (run / "latest").write_text(pointer)
    message = f"checkpoint pointer {run / 'latest'} holds {pointer!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        latest_checkpoint(run)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{}", "an integer 'step' >= 0, got None"),
        ("[]", "a JSON object, got list"),
        ('{"extra": {}}', "an integer 'step' >= 0, got None"),
        ('{"step": "5"}', "an integer 'step' >= 0, got '5'"),
        ('{"step": 2.5}', "an integer 'step' >= 0, got 2.5"),
        ('{"step": true}', "an integer 'step' >= 0, got True"),
        ('{"step": -3}', "an integer 'step' >= 0, got -3"),
        ('{"step": 1, "ex', "is not valid JSON"),
    ],
)
def test_corrupt_state_json_is_a_clear_error_and_leaves_the_model_alone(tmp_path, content, reason):
    path = save_checkpoint(tmp_path, 4, _model(seed=1))
    (path / "state.json").write_text(content)
    model = _model(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(f"corrupt checkpoint {path}: state.json")) as e:
        load_checkpoint(path, model)
    assert reason in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoint_folders_get_the_mode_of_a_plain_mkdir(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path, 1, _model())
        again = save_checkpoint(tmp_path, 1, _model())  # the -K name of a step saved again
    finally:
        os.umask(old)
    for p in (path, again):
        assert p.stat().st_mode & 0o777 == 0o777 & ~umask
    assert json.loads((path / "state.json").read_text())["step"] == 1

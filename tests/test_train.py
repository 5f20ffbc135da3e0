"""The train stages on CPU at a small width: models, schedule, learning, resume, divergence."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from helpers.models import ARCHITECTURES, build_model
from helpers.project import clone, train, weights
from src.models.build import count_parameters
from src.models.resnet import BLOCKS
from src.train import checkpoint
from src.train.optim import get_lr, param_groups

# runtime.* stays on auto here: with a GPU these tests take the CUDA path.
pytestmark = pytest.mark.gpu

# --------------------------------------------------------------------------- model and optimiser

@pytest.mark.parametrize("name, expected", [("resnet18", 11_220_132), ("resnet34", 21_328_292),
                                            ("resnet50", 23_705_252)])
def test_parameter_counts_match_the_cifar_resnets(name, expected):
    assert count_parameters(build_model(name, num_classes=100, width=64)) == expected


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_width_scales_every_stage(name):
    model = build_model(name, width=8)
    expansion = BLOCKS[ARCHITECTURES[name]["block"]].expansion
    assert model.conv1.out_channels == 8
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    out_channels = [next(m for m in reversed(list(s.modules())) if isinstance(m, torch.nn.Conv2d)).out_channels
                    for s in stages]
    assert out_channels == [8 * expansion, 16 * expansion, 32 * expansion, 64 * expansion]
    assert model.fc.in_features == 64 * expansion
    # CIFAR stem: 3x3 stride 1, no max-pool, so 32x32 reaches layer1 unchanged.
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


# Modules whose CUDA backward PyTorch refuses under use_deterministic_algorithms(True)
# (its docs list them): with one in the model, `runtime.deterministic` could not train on a GPU.
NO_DETERMINISTIC_CUDA_BACKWARD = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d,
                                  torch.nn.AvgPool3d, torch.nn.ReflectionPad2d, torch.nn.Upsample)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_models_avoid_layers_without_a_deterministic_cuda_backward(name):
    model = build_model(name, width=8)
    assert not [m for m in model.modules() if isinstance(m, NO_DETERMINISTIC_CUDA_BACKWARD)]
    features = torch.randn(4, 64 * BLOCKS[ARCHITECTURES[name]["block"]].expansion, 4, 4)
    expected = torch.nn.AdaptiveAvgPool2d(1)(features)  # what torchvision's ResNet pools with
    torch.testing.assert_close(model.avgpool(features), expected)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    lrs = [get_lr(s, 100, 10, 0.4, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.04) and lrs[9] == pytest.approx(0.4)
    assert np.allclose(np.diff(lrs[:10]), 0.04)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.001


def test_onecycle_schedule_starts_at_a_fraction_and_ends_at_zero():
    lrs = [get_lr(s, 100, 30, 1.0, "onecycle") for s in range(101)]
    assert 0.04 <= lrs[0] < 0.1 and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.0)


def test_weight_decay_skips_batchnorm_and_biases_unless_asked():
    model = build_model("resnet18", width=4)
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0
    everything, nothing = param_groups(model, 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == len(list(model.parameters())) and not nothing["params"]


# --------------------------------------------------------------------------- the stage

def test_training_learns_well_above_chance_and_writes_a_safe_model_file(trained):
    project, result = trained
    state = weights(project)  # weights_only=True: plain tensors and containers only
    assert set(state) >= {"state_dict", "params", "prepared_data_hash", "versions", "architecture"}
    assert state["params"]["lr"] == 0.2 and state["params"]["epochs"] == 3
    assert state["versions"]["torch"] == torch.__version__
    final = state["history"][-1]
    # 15 of the 300 held-out images: chance gets 3 +- 1.7. Machines differ here (7% on an AVX2
    # EPYC, over 10% with AVX-512's channels_last kernels), so the bar is what no chance reaches.
    assert final["heldout_acc"] >= 5, f"chance is 1%; got {final['heldout_acc']:.1f}%"
    assert final["train_loss"] < state["history"][0]["train_loss"]
    assert not (project.root / "checkpoints/resnet18.pt").exists(), "the checkpoint is removed at the end"
    curve = (project.root / "plots/train/resnet18/plots/metrics/heldout/acc.tsv").read_text().splitlines()
    assert curve[0].split("\t")[:2] == ["step", "acc"] and len(curve) == 1 + 3
    assert [row.split("\t")[0] for row in curve[1:]] == ["1", "2", "3"]  # `dvc plots`' x: the epoch
    # The progress bar shows the running loss and accuracy from the first step of the first epoch.
    first_epoch = result.stderr.split("resnet18 epoch 2/3")[0]
    assert re.search(r"resnet18 epoch 1/3:.*acc=[\d.]+%.*loss=[\d.]+", first_epoch), first_epoch[-500:]
    # The stage ends with one sentence: held-out top-1, time and speed, no dump of the history.
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"resnet18: test top-1 {final['heldout_acc']:.2f}% after 3 epochs, [\d,]+ s of "
                        r"training at [\d,]+ img/s; wrote models/resnet18.pt", last), last
    assert "monitoring only" in (project.root / "plots/train/resnet18/metrics.json").read_text()


def test_a_checkpoint_from_other_params_or_a_hostile_one_is_not_resumed(prepared, tmp_path):
    project = clone(prepared, tmp_path / "other")
    project.set_params({"epochs": 1})
    checkpoint = project.root / "checkpoints/resnet18.pt"
    checkpoint.parent.mkdir()
    torch.save({"fingerprint": "made-with-lr-0.05", "epoch": 1, "model": {}, "optimizer": {},
                "history": []}, checkpoint)
    result = train(project)
    assert result.returncode == 0, result.stderr
    assert "made with other params, data or code; starting fresh" in result.stdout

    sentinel = tmp_path / "pwned"
    checkpoint.parent.mkdir(exist_ok=True)
    checkpoint.write_bytes(b"cos\nsystem\n(S'touch " + str(sentinel).encode() + b"'\ntR.")
    result = train(project)
    assert result.returncode == 0, result.stderr
    assert "ignoring unreadable checkpoint" in result.stdout
    assert not sentinel.exists(), "the hostile checkpoint ran code"


def test_divergence_stops_at_once_with_a_clear_message_and_no_weights(prepared, tmp_path):
    project = clone(prepared, tmp_path / "diverge")
    project.set_params({"lr": 1e30, "train.warmup_epochs": 0})
    result = train(project)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert re.search(r"resnet18 diverged: loss became (nan|inf|-inf) at epoch 1, step \d+, lr \S+e\+(29|30)\.", message)
    assert "Lower the learning rate" in message
    assert not (project.root / "models/resnet18.pt").exists()


def test_background_checkpoints_snapshot_the_state_and_report_write_errors(tmp_path):
    weight = torch.ones(3)
    saver = checkpoint.BackgroundSaver()
    saver.submit({"model": {"w": weight}, "history": [{"epoch": 1}]}, tmp_path / "a.pt")
    weight.add_(1)  # training goes on changing the live tensors in place
    saver.wait()
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.ones(3)) and saved["history"] == [{"epoch": 1}]
    (tmp_path / "file").write_text("")
    saver.submit({"w": weight}, tmp_path / "file" / "b.pt")  # its folder is a file: the write fails
    with pytest.raises(OSError):
        saver.wait()
    saver.wait()  # the error is raised once

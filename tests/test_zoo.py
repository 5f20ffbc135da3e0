"""Architectures of torchvision and timm by name: the CIFAR stem, the input resize, bad blocks, and
ImageNet weights from a local file with the frozen first phase (real torch, no network)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from helpers.project import ROOT
from src.errors import UserError
from src.models import pretrained
from src.models.build import build_model, check_architecture
from src.params import TrainParams, parse_params
from src.runtime import Runtime
from src.train.freeze import BackboneFreeze
from src.train.loop import StepRecipe, train_epoch
from src.train.optim import build_optimizer

TINY_MOBILENET = {"zoo": "torchvision", "name": "mobilenet_v2", "options": {"width_mult": 0.1}, "input_size": None}


def block(**keys) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["extra"] = keys
    return params


def test_the_cifar_stem_downsamples_four_times_less_and_keeps_every_weight_shape():
    stemmed = build_model(TINY_MOBILENET)
    assert stemmed.stem_changes == ["features.0.0 stride 1", "features.2.conv.1.0 stride 1"]
    import torchvision
    zoo_model = torchvision.models.mobilenet_v2(num_classes=100, width_mult=0.1)
    assert {k: v.shape for k, v in stemmed.state_dict().items()} == \
        {k: v.shape for k, v in zoo_model.state_dict().items()}
    sides = {}

    def side_of(key):
        def hook(module, inputs, output):
            sides[key] = output.shape[-1]
        return hook

    stemmed.features[-1].register_forward_hook(side_of("stemmed"))
    zoo_model.features[-1].register_forward_hook(side_of("zoo"))
    with torch.no_grad():
        assert stemmed.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
        zoo_model.eval()(torch.zeros(2, 3, 32, 32))
    assert sides == {"stemmed": 4, "zoo": 1}
    resnet = build_model({"zoo": "torchvision", "name": "resnet18", "options": {}, "input_size": None})
    assert resnet.stem_changes == ["conv1 stride 1", "maxpool removed"] and isinstance(resnet.maxpool, nn.Identity)


def test_input_size_resizes_each_batch_inside_the_model():
    model = build_model({"zoo": "timm", "name": "test_efficientnet", "options": {}, "input_size": 48})
    seen = []
    model.conv_stem.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)) and None)
    with torch.no_grad():
        assert model.eval()(torch.rand(3, 3, 32, 32)).shape == (3, 100)
    assert seen == [(3, 3, 48, 48)]
    assert not hasattr(model, "stem_changes")  # the zoo's architecture, unchanged


@pytest.mark.parametrize("architecture, message", [
    ({"zoo": "torchvision", "name": "mobilenetv2"},
     "torchvision has no architecture 'mobilenetv2': did you mean mobilenet_v2"),
    ({"zoo": "timm", "name": "xception_41"}, "timm has no architecture 'xception_41': did you mean xception41"),
    ({"zoo": "torchvision", "name": "convnext_tiny"},
     "convnext_tiny has no CIFAR stem here: its layer features.0.0 (Conv2d, kernel (4, 4), stride (4, 4)) does not "
     "keep the image size at stride 1. Set input_size in its block instead"),
    ({"zoo": "timm", "name": "test_vit"}, "test_vit has no CIFAR stem here: its layer patch_embed.proj (Conv2d, "
                                          "kernel (16, 16), stride (16, 16))"),
    ({"zoo": "torchvision", "name": "vit_b_16"}, "vit_b_16 cannot take 32x32 images as the zoo builds it (Wrong "
                                                "image height! Expected 224 but got 32!): set input_size"),
    ({"zoo": "torchvision", "name": "mobilenet_v2", "options": {"widthmult": 0.5}},
     "torchvision's mobilenet_v2 does not take options {'widthmult': 0.5}"),
    ({"zoo": "torchvision", "name": "resnet18", "options": {"width_per_group": 7}},
     "torchvision's resnet18 does not take options {'width_per_group': 7}: BasicBlock only supports"),
])
def test_a_bad_zoo_architecture_is_refused_in_one_line(architecture, message):
    with pytest.raises(ValueError) as error:
        check_architecture(architecture)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1, str(error.value)


@pytest.mark.parametrize("keys, message", [
    ({"zoo": "torchvision"}, "model.extra.zoo = torchvision needs `name`"),
    ({"zoo": "keras", "name": "x"}, "model.extra.zoo"),
    ({"name": "mobilenet_v2"}, "model.extra.name is for an architecture of a zoo: add `zoo: torchvision`"),
    ({"zoo": "timm", "name": "x", "block": "basic"}, "model.extra.zoo = 'timm' beside model.extra.block/layers"),
    ({"zoo": "timm", "name": "x", "freeze_epochs": 2},
     "model.extra.freeze_epochs = 2 freezes ImageNet weights: add `pretrained: imagenet`"),
    ({"zoo": "timm", "name": "x", "pretrained": "imagenet21k"}, "model.extra.pretrained"),
    ({"zoo": "timm", "name": "x", "input_size": 8}, "model.extra.input_size"),
])
def test_bad_zoo_keys_name_the_key_and_the_fix(keys, message):
    with pytest.raises(UserError) as error:
        parse_params(block(**keys))
    assert message in str(error.value), str(error.value)


def test_a_zoo_block_is_an_architecture_the_model_file_stores():
    params = parse_params(block(zoo="timm", name="xception41", pretrained="imagenet", freeze_epochs=1,
                                input_size=96, options={"drop_rate": 0.2}))
    assert params.recipe("extra").architecture() == {"zoo": "timm", "name": "xception41",
                                                     "options": {"drop_rate": 0.2}, "input_size": 96}


# --------------------------------------------------------------------------- ImageNet weights

@pytest.fixture
def imagenet_file(tmp_path, monkeypatch):
    """torchvision's mobilenet_v2 ImageNet file, made here at width 0.1, in a torch.hub cache of its own."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    made = torchvision.models.mobilenet_v2(width_mult=0.1)
    for name, tensor in made.state_dict().items():  # BatchNorm statistics that are not the defaults
        if name.endswith(("running_mean", "running_var")):
            tensor.uniform_(0.5, 1.5)
    torch.save(made.state_dict(), cached)
    path = tmp_path / "weights" / "mobilenet.pt"
    source = pretrained.fetch("torchvision", "mobilenet_v2", {"width_mult": 0.1}, path)
    assert source["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V2"
    assert source["url"].endswith("/mobilenet_v2-7ebf99e0.pth")
    return path, made.state_dict()


def test_imagenet_weights_load_under_a_new_head_and_the_frozen_phase_leaves_the_backbone_as_loaded(imagenet_file):
    path, imagenet = imagenet_file
    model = build_model(TINY_MOBILENET)
    head, record = pretrained.load_into(model, path)
    assert head == {"classifier.1.weight", "classifier.1.bias"}
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(loaded[k], imagenet[k]) for k in imagenet if not k.startswith("classifier"))
    assert record["md5"] and record["zoo"] == "torchvision"

    freeze = BackboneFreeze(model, head, epochs=1)
    optimizer = build_optimizer(model, TrainParams(), torch.device("cpu"), freeze.is_backbone)
    runtime = Runtime(device=torch.device("cpu"), compile=False, gpu_augment=False, workers=0, channels_last=False,
                      amp_dtype=None)
    rng = np.random.default_rng(0)
    batches = [(torch.from_numpy(rng.random((8, 3, 32, 32), dtype=np.float32)),
                torch.from_numpy(rng.integers(0, 100, 8))) for _ in range(3)]
    recipe = StepRecipe(0.1, None, None, None, freeze)

    def epoch(number):
        train_epoch(model, optimizer, batches, lambda x, y: (x, y), recipe, runtime, epoch=number, epochs=2,
                    first_step=3 * number, total_steps=6, warmup_steps=0, peak_lr=0.1, schedule="cosine",
                    seed=0, desc="test", progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    frozen = epoch(0)
    backbone = [k for k in loaded if not k.startswith("classifier") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(frozen[k], loaded[k]) for k in backbone)  # weights and BatchNorm statistics
    assert not torch.equal(frozen["classifier.1.weight"], loaded["classifier.1.weight"])  # the head learnt
    thawed = epoch(1)
    assert not all(torch.equal(thawed[k], frozen[k]) for k in backbone if "running" not in k)
    assert not torch.equal(thawed["features.1.conv.0.1.running_mean"], frozen["features.1.conv.0.1.running_mean"])


def test_weights_of_other_options_are_refused_saying_why(imagenet_file):
    path, _ = imagenet_file
    wider = build_model({**TINY_MOBILENET, "options": {"width_mult": 0.5}})
    with pytest.raises(ValueError, match=r"mobilenet.pt does not fit the model: \d+ tensors differ, e.g. "
                                         r"features.0.0.weight \(file \(8, 3, 3, 3\), model \(16, 3, 3, 3\)\)"):
        pretrained.load_into(wider, path)


# --------------------------------------------------------------------------- the custom CNN (code)

def test_the_custom_cnn_is_built_from_its_block_and_classifies_32x32_images():
    architecture = {"module": "custom_cnn", "options": {"blocks": 3, "convs_per_block": 2, "block_dropout": 0.25}}
    model = build_model(architecture, num_classes=100, width=4, dropout=0.2).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    # Blocks of 4, 8 and 16 channels, two 3x3 convolutions each (no bias) with their BatchNorms, then
    # the classifier on the 16 pooled channels.
    convs = 3 * 4 * 9 + 4 * 4 * 9 + 4 * 8 * 9 + 8 * 8 * 9 + 8 * 16 * 9 + 16 * 16 * 9
    assert sum(p.numel() for p in model.parameters()) == convs + 2 * 2 * (4 + 8 + 16) + 16 * 100 + 100


@pytest.mark.parametrize("options, message", [({"blocks": 6}, "a 32x32 image takes 1 to 5 blocks"),
                                              ({"convs_per_block": 0}, "convs_per_block must be at least 1")])
def test_custom_cnn_options_a_32x32_image_cannot_take_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        build_model({"module": "custom_cnn", "options": options}, width=4)

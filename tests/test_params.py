"""params.yaml: one typed schema, checked by every stage before any work."""
from __future__ import annotations

import time

import pytest
import yaml

from helpers.project import ROOT
from src.errors import UserError
from src.params import Params, load_params, parse_params

BAD_INPUTS = [  # (key, value, words the one-line message must contain)
    ("lr", 0, "greater than 0"),
    ("lr", -0.1, "greater than 0"),
    ("lr", "fast", "valid number"),
    ("epochs", 0, "greater than or equal to 1"),
    ("epochs", 1.5, "valid integer"),
    ("epochs", True, "valid integer"),
    ("batch_size", 0, "greater than or equal to 1"),
    ("seed", -1, "greater than or equal to 0"),
    ("model.width", 0, "greater than or equal to 1"),
    ("data.train_limit", -5, "greater than or equal to 1"),
    ("data.test_limit", -1, "greater than or equal to 1"),
    ("data.val_size", 50_000, "smaller than the training set"),
    ("data.url", "ftp://mirror.example/cifar.tgz", "http://, https:// or file://"),
    ("data.md5", "abc123", "32 hexadecimal digits"),
    ("augment.crop", "random", "'pad' or 'resized'"),
    ("augment.crop_fill", "zero", "'black', 'mean' or 'reflect'"),
    ("augment.cutout_p", 1.5, "less than or equal to 1"),
    ("augment.resized_scale", [0.9, 0.2], "0 < low <= high <= 1"),
    ("model.resnet50.autoaugment", "yes", "valid number"),
    ("model.resnet50.autoaugment", True, "probability of applying the AutoAugment policy"),
    ("model.resnet50.autoaugment", 1.5, "less than or equal to 1"),
    ("augment.resized_ratio", [1.2, 0.8], "0 < low <= high"),
    ("augment.cutout_inside", "yes", "valid boolean"),
    ("model.resnet18.mixup_alpha", -0.2, "greater than or equal to 0"),
    ("train.schedule", "step", "'cosine' or 'onecycle'"),
    ("train.momentum", 1.0, "less than 1"),
    ("runtime.device", "tpu", "auto, cuda, cuda:N (one GPU by index), mps or cpu"),
    ("runtime.device", "cuda:x", "cuda:N"),
    ("runtime.device", "cuda:-1", "cuda:N"),
    ("runtime.device", "gpu:0", "cuda:N"),
    ("runtime.nproc_per_node", 0, "whole number >= 1"),
    ("runtime.nproc_per_node", "2", "whole number >= 1"),
    ("runtime.nproc_per_node", True, "whole number >= 1"),
    ("runtime.nproc_per_node", 1.5, "whole number >= 1"),
    ("runtime.sync_batchnorm", "on", "'auto', true or false"),
    ("runtime.workers", -2, "whole number >= 0"),
    ("model.depth", 101, "unknown key 'model.depth'"),
    ("model.resnet18.block", "plain", "'basic' or 'bottleneck'"),
    ("model.resnet18.layers", [2, 2, 2], "at least 4 items"),
    ("model.resnet18.module", "wide_resnet", "a model has one architecture"),
    ("model.zero_init_residual", "no", "valid boolean"),
    ("model.dropout", 1.0, "less than 1"),
    ("model.resnet18.cutmix_alpha", -1.0, "greater than or equal to 0"),
    ("model.resnet34.cutmix_prob", 1.5, "less than or equal to 1"),
    ("train.ema_decay", 1.0, "less than 1"),
    ("train.ema_decay", 0, "greater than 0"),
    ("evaluate.hflip_tta", "maybe", "valid boolean"),
    ("runtime.precision", "fp16", "'auto', 'bf16' or 'fp32'"),
    ("runtime.channels_last", "sometimes", "'auto', true or false"),
    ("runtime.compile", "yes", "'auto', true or false"),
    ("runtime.workers", "many", "whole number >= 0"),
]


def with_value(raw: dict, key: str, value) -> dict:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return raw


def default_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_yaml_matches_the_schema_exactly():
    raw = default_raw()
    params = parse_params(raw)  # extra="forbid": an unknown key in params.yaml fails here
    # ...and the schema's defaults are the file's values: one source of truth for the recipe. The
    # models and their reference results are data that only params.yaml holds (docs/models.md).
    defaults, values = Params().model_dump(), params.model_dump()
    assert Params().model.names == [] and defaults["reference"] == {}
    assert defaults["model"] == {key: values["model"][key] for key in ("width", "zero_init_residual", "dropout")}
    assert {k: v for k, v in defaults.items() if k not in ("model", "reference")} == \
        {k: v for k, v in values.items() if k not in ("model", "reference")}
    assert params.model.names[:3] == ["resnet18", "resnet34", "resnet50"]  # the three references' (and any added after)
    assert [params.recipe(name).architecture() for name in params.model.names[:3]] == [
        {"block": "basic", "layers": [2, 2, 2, 2]}, {"block": "basic", "layers": [3, 4, 6, 3]},
        {"block": "bottleneck", "layers": [3, 4, 6, 3]}]


@pytest.mark.parametrize("key, value, allowed", BAD_INPUTS, ids=[f"{k}={v!r}" for k, v, _ in BAD_INPUTS])
def test_bad_value_names_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(UserError) as error:
        parse_params(with_value(default_raw(), key, value))
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert key in message and allowed in message
    if "unknown key" not in allowed and key != "data.val_size":
        assert repr(value) in message


def test_one_gpu_by_index_means_one_process():
    raw = with_value(with_value(default_raw(), "runtime.device", "cuda:1"), "runtime.nproc_per_node", 2)
    with pytest.raises(UserError, match=r"runtime.device = cuda:1 picks one GPU, so runtime.nproc_per_node "
                                        r"must be 1 or auto, not 2"):
        parse_params(raw)
    for nproc in ("auto", 1):
        params = parse_params(with_value(with_value(default_raw(), "runtime.device", "cuda:1"),
                                         "runtime.nproc_per_node", nproc))
        assert params.runtime.device == "cuda:1"


@pytest.mark.parametrize("override, words", [
    ({"offline_copies": 2}, "model.resnet18.augment.offline_copies is not a key a model can override: use one "
                            "of crop, crop_padding"),
    ({"crops": "pad"}, "model.resnet18.augment.crops is not a key a model can override"),
    ({"crop": "random"}, "model.resnet18.augment.crop = 'random' is not allowed: Input should be 'pad' or 'resized'"),
    ({"resized_scale": [0.9, 0.2]}, "model.resnet18.augment.resized_scale = [0.9, 0.2] is not allowed: must be "
                                    "[low, high] with 0 < low <= high <= 1"),
])
def test_a_bad_model_augment_override_names_the_key(override, words):
    raw = with_value(default_raw(), "model.resnet18.augment", override)
    with pytest.raises(UserError) as error:
        parse_params(raw)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and words in message, message


def test_model_augment_overrides_only_the_keys_it_names():
    raw = with_value(default_raw(), "augment.cutout_size", 8)
    raw = with_value(with_value(raw, "augment.crop_padding", 2), "model.resnet18.augment", {"crop": "resized"})
    params = parse_params(raw)
    assert params.model_augment("resnet18").crop == "resized"
    assert params.model_augment("resnet18").cutout_size == 8  # not overridden: the shared key reaches it
    assert params.model_augment("resnet34").crop == "pad" and params.model_augment("resnet34").crop_padding == 2
    resnet50 = params.model_augment("resnet50")  # the ResNet-50 reference's crop stays, the shared cutout reaches it
    assert (resnet50.crop, resnet50.resized_scale, resnet50.resized_ratio, resnet50.cutout_size) == (
        "resized", (0.8, 1.0), (0.9, 1.1), 8)


def test_warmup_scales_with_the_model_epochs():
    params = parse_params(default_raw())
    assert params.model_warmup_epochs("resnet18") == params.train.warmup_epochs == 5
    assert params.model_warmup_epochs("resnet50") == 10 and params.model_epochs("resnet50") == 200


def test_val_size_counts_against_the_train_limit():
    raw = with_value(with_value(default_raw(), "data.train_limit", 1000), "data.val_size", 1000)
    with pytest.raises(UserError, match=r"data.val_size = 1000 must be smaller than the training set \(1000"):
        parse_params(raw)


def test_broken_yaml_and_missing_file_are_user_errors(tmp_path):
    (tmp_path / "params.yaml").write_text("lr: [0.1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.parametrize("stage, key, value", [
    ("download", "data.md5", "not-an-md5"),
    ("augment", "data.val_size", -3),
    ("train --model resnet18", "lr", -1),
    ("evaluate", "runtime.eval_batch_size", 0),
    ("report", "epochs", 2.5),
])
def test_every_stage_refuses_bad_params_in_seconds_without_traceback(stage_copy, stage, key, value):
    (stage_copy.root / "metrics").mkdir(exist_ok=True)
    sentinel = stage_copy.root / "metrics" / "resnet18.json"
    sentinel.write_text('{"top1": 1.0}\n')
    stage_copy.set_params({key: value})
    start = time.perf_counter()
    result = stage_copy.run("python", "-m", *f"stages.{stage}".split())
    seconds = time.perf_counter() - start
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and repr(value) in lines[0], result.stderr
    assert seconds < 30, f"validation took {seconds:.0f} s"
    assert sentinel.read_text() == '{"top1": 1.0}\n', "metrics/ must be untouched"
    assert not (stage_copy.root / "data").exists() and not (stage_copy.root / "models").exists()


def test_a_model_is_a_block_with_an_architecture():
    raw = default_raw()
    raw["model"]["resnet101"] = {"block": "bottleneck", "layers": [3, 4, 23, 3]}  # docs/models.md
    params = parse_params(raw)
    assert params.model.names == ["resnet18", "resnet34", "resnet50", "resnet101"]
    assert params.recipe("resnet101").architecture() == {"block": "bottleneck", "layers": [3, 4, 23, 3]}
    assert params.model_epochs("resnet101") == params.epochs and params.model_lr("resnet101") == params.lr
    raw["model"]["wrn"] = {"module": "wide_resnet", "options": {"depth": 28}}  # an architecture in code
    assert parse_params(raw).recipe("wrn").architecture() == {"module": "wide_resnet", "options": {"depth": 28}}


def test_a_bad_item_of_a_list_names_the_list_and_its_position():
    with pytest.raises(UserError, match=r"^params.yaml: model.resnet18.layers\[1\] = 0 is not allowed: Input should be "
                                        r"greater than or equal to 1. .*`dvc exp run -S model.resnet18.layers=...`$"):
        parse_params(with_value(default_raw(), "model.resnet18.layers", [2, 0, 2, 2]))


def test_a_misspelt_model_name_is_a_block_without_an_architecture():
    raw = default_raw()
    raw["model"]["resnet05"] = {"mixup_alpha": 0.4}  # what `dvc exp run -S model.resnet05.mixup_alpha=0.4` makes
    with pytest.raises(UserError, match=r"model.resnet05 has no architecture.*block: basic \| bottleneck.*"
                                        r"check its name \(resnet18, resnet34, resnet50\)"):
        parse_params(raw)
    raw["model"]["ResNet-101"] = {"block": "basic", "layers": [1, 1, 1, 1]}
    del raw["model"]["resnet05"]
    with pytest.raises(UserError, match=r"model.ResNet-101: a model's name .* lower-case"):
        parse_params(raw)


def test_an_unknown_model_is_named_with_the_ones_there_are():
    with pytest.raises(UserError, match=r"no model.resnet101 block: the models are resnet18, resnet34, resnet50"):
        parse_params(default_raw()).recipe("resnet101")

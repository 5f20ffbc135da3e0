"""docs/models.md beyond the ResNets: a torchvision model from scratch, a timm model from ImageNet
weights (a local file, no network) with its frozen phase, and the custom CNN, added to a trained
project as the page says, at tiny sizes. `dvc repro` trains those alone, and evaluate, the
report, src.compare, src.classify, the app and the Space take them."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from helpers.adding import insert_models, original_outputs, snippets
from helpers.commands import ok, ran_stages
from helpers.models import MODELS, TRAIN_STAGES
from helpers.pipeline import written_out
from helpers.project import ROOT, Project, copy_project
from src import imports

NEW = ["mobilenet_v2", "effnet", "custom_cnn"]
HUB_ID = "timm/test_efficientnet.r160_in1k"  # timm's test_efficientnet: 125k parameters


def hub_cache(home: Path) -> dict[str, torch.Tensor]:
    """The Hugging Face cache under `home` holding an ImageNet file of timm's test_efficientnet,
    made here (random weights, BatchNorm statistics off their defaults), as `hf download` leaves it."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    weights = timm.create_model("test_efficientnet").state_dict()
    for name, tensor in weights.items():
        if name.endswith(("running_mean", "running_var")):
            tensor.uniform_(0.5, 1.5)
    repo = home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return weights


def the_pages_edits(root: Path) -> None:
    """The three kinds of docs/models.md, sized for a test: the torchvision block, the pretrained
    block and its two stages (test_efficientnet for xception41), and the custom CNN's block."""
    zoo_block = snippets("models.md", "A torchvision or timm architecture")[0]
    pretrained_block, pretrained_stages = snippets("models.md", "From ImageNet weights")
    cnn_block = snippets("models.md", "An architecture in code")[0]
    zoo_block = zoo_block.replace("options: {}", "options: {width_mult: 0.1}")
    pretrained_block = (pretrained_block.replace("xception41", "test_efficientnet")
                        .replace("input_size: 96", "input_size: 48").replace("epochs_scale: 0.3", "epochs_scale: 1.0"))
    cnn_block = cnn_block.replace("blocks: 3", "blocks: 2")
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    cnn_stage = written_out(pipeline)["stages"]["train-resnet18"] | {
        "cmd": "python -m stages.train --model custom_cnn", "outs": ["models/custom_cnn.pt", "plots/train/custom_cnn"]}
    cnn_stage["deps"] = [*cnn_stage["deps"], "src/models/custom_cnn.py"]
    cnn_stage["params"] = [key for key in cnn_stage["params"] if key != "model.resnet18"] + ["model.custom_cnn"]
    zoo_stage = snippets("models.md", "Add a model")[1].replace("resnet101", "mobilenet_v2")  # step 2
    insert_models(root, zoo_block + pretrained_block.replace("xception", "effnet") + cnn_block,
                  zoo_stage + "\n" + pretrained_stages.replace("xception", "effnet") + "\n"
                  + yaml.safe_dump({"train-custom_cnn": cnn_stage}, sort_keys=False), NEW)


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained_tiny) -> Project:
    folder = tmp_path_factory.mktemp("zoo-models")
    copied = copy_project(trained_tiny, folder / "project")
    env = {"TORCH_HOME": str(folder / "torch"), "HF_HOME": str(folder / "hf"), "HF_HUB_OFFLINE": "1"}
    return Project(copied.root, env={**copied.env, **env})


def test_the_pages_weights_and_train_stages_declare_the_code_they_run():
    _, stages = snippets("models.md", "From ImageNet weights")
    stages = yaml.safe_load(stages.replace("*train_params, ", ""))  # the alias, defined in dvc.yaml
    weights_code = {d for d in stages["weights-xception"]["deps"] if d.endswith(".py")}
    imported = {str(p.relative_to(ROOT)) for p in imports.imported_files(ROOT / "stages" / "weights.py", ROOT)
                if p.name != "__init__.py"}
    assert weights_code == imported
    shared = written_out(yaml.safe_load((ROOT / "dvc.yaml").read_text()))["stages"]["train-resnet18"]["deps"]
    assert stages["train-xception"]["deps"] == [*shared, "weights/xception.pt"]


def test_zoo_and_code_models_train_alone_and_every_command_takes_them(project, tmp_path):
    root = project.root
    before = original_outputs(root)
    imagenet = hub_cache(Path(project.env["HF_HOME"]))
    the_pages_edits(root)
    ok(project.git("add", "-A"))
    run = ok(project.dvc("repro"))
    assert ran_stages(run.stdout) == {"weights-effnet", *(f"train-{m}" for m in NEW), "evaluate", "report"}, \
        run.stdout
    assert original_outputs(root) == before  # the three ResNets: weights, curves, metrics
    assert "mobilenet_v2: CIFAR stem (features.0.0 stride 1, features.2.conv.1.0 stride 1)" in run.stdout

    # The pretrained model: its weights file is in dvc.lock, the model file and the provenance.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    weights_md5 = next(d["md5"] for d in lock["train-effnet"]["deps"] if d["path"] == "weights/effnet.pt")
    state = torch.load(root / "models/effnet.pt", map_location="cpu", weights_only=True)
    assert state["pretrained"]["md5"] == weights_md5 and state["pretrained"]["url"] == HUB_ID
    assert state["architecture"] == {"zoo": "timm", "name": "test_efficientnet", "options": {}, "input_size": 48}
    detail = json.loads((root / "evaluation/detail/effnet.json").read_text())
    assert detail["provenance"]["pretrained"]["md5"] == weights_md5
    # freeze_epochs 2 of 2 epochs: the backbone is the ImageNet file's, BatchNorm statistics too; the head learnt.
    trained = state["state_dict"]
    backbone = [k for k in imagenet if not k.startswith("classifier") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(trained[k], imagenet[k]) for k in backbone)
    assert trained["classifier.weight"].shape == (100, imagenet["classifier.weight"].shape[1])

    # Every downstream view: metrics, the report, src.compare, src.classify, the app, the Space.
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert sorted(k for k in summary if k != "comparisons") == sorted([*MODELS, *NEW])
    assert len(summary["comparisons"]) == 15
    report = (root / "plots/report.md").read_text()
    assert "| ResNet-50 | mobilenet_v2 | effnet | custom_cnn |" in report
    assert all(f"![{m} confusion matrix](report/confusion_{m}.png)" in report for m in NEW)
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (20, 30, 200)).save(image)
    for name in NEW:
        classified = json.loads(ok(project.run(sys.executable, "-m", "src.classify", str(image), "--model", name,
                                               "--json", "--device", "cpu")).stdout)
        assert len(classified[0]["predictions"]) == 5, name
    script = "from pathlib import Path; import app; print(app.models_table(Path('.'), *app.load_models(Path('.'))))"
    table = ok(project.run(sys.executable, "-c", script)).stdout
    assert all(re.search(rf"^\| {m} \| \d+\.\d\d% \(", table, re.M) for m in NEW), table
    ok(project.git("add", "-A"))
    ok(project.dvc("exp", "save", "-n", "six-models"))
    compared = json.loads(ok(project.run(sys.executable, "-m", "src.compare", "--json")).stdout)
    assert list(compared["groups"][0]["models"]) == [*MODELS, *NEW]
    space = tmp_path / "space"
    ok(project.run(sys.executable, "-m", "src.space", str(space)))
    assert (space / "src/models/custom_cnn.py").is_file() and (space / "src/models/zoo.py").is_file()
    assert "timm==" in (space / "requirements.txt").read_text()

    # Other weights under the same params: DVC sees the file change and would retrain that model only.
    saved = torch.load(root / "weights/effnet.pt", weights_only=True)
    saved["state_dict"]["conv_stem.weight"] += 1
    torch.save(saved, root / "weights/effnet.pt")
    status = ok(project.dvc("status")).stdout
    changed = set(re.findall(r"^([\w-]+):", status, re.M))
    assert {"weights-effnet", "train-effnet"} <= changed and not changed & (TRAIN_STAGES | {"train-mobilenet_v2"}), \
        status


def test_weights_unavailable_offline_say_where_to_put_the_file(project):
    """No cached file and no network: one line naming the cache folder to fill."""
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    if "effnet" not in params["model"]:
        pytest.skip("needs the models of the test before")
    failed = project.run(sys.executable, "-m", "stages.weights", "--model", "effnet")
    assert failed.returncode == 0, failed.stderr  # the cached file
    empty = {**project.env, "HF_HOME": str(project.root.parent / "empty-hf")}
    failed = Project(project.root, env=empty).run(sys.executable, "-m", "stages.weights", "--model", "effnet")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert f"run `hf download {HUB_ID}` on a machine with internet and copy its cache folder" in failed.stderr
    assert str(project.root.parent / "empty-hf" / "hub" / f"models--{HUB_ID.replace('/', '--')}") in failed.stderr
    failed = project.run(sys.executable, "-m", "stages.weights", "--model", "mobilenet_v2")
    assert failed.returncode == 1 and "model.mobilenet_v2 has no `pretrained: imagenet`" in failed.stderr

"""Stage `evaluate`: test-split metrics (and val, when held out), timings and plot data of every model.

    python -m stages.evaluate            (run by `dvc repro evaluate`)

In:  models/<name>.pt of every `model.<name>` block in params.yaml, data/prepared/ (test.npz,
     val.npz when data.val_size > 0, classes.json, stats.json), params model (the list of
     models), evaluate, runtime
Out: metrics/<name>.json             DVC metrics, the headline numbers: top1, top5 and their 95%
                                     bootstrap bounds, loss, ECE, macro F1 (test split), and
                                     `val: {top1, top5, loss}` with a val split (what tuning
                                     chooses by); rounded, so identical runs give identical bytes
     metrics/summary.json            DVC metric: each model's top1 (and val.top1) side by side, and
                                     `comparisons`: each pair's test top-1 difference, its
                                     interval, McNemar p (+ Holm), p to 4 significant digits
     evaluation/detail/<name>.json   the rest: macro precision/recall, per-superclass accuracy,
                                     parameters, weights scored, provenance (not a DVC metric)
     evaluation/timing/<name>.json   throughput and latency on this device over several passes
                                     (apart, and not a DVC metric: they vary per run)
     plots/confusion/<name>.csv      actual,predicted superclass of every test image (DVC confusion)
     plots/reliability/<name>.csv    per confidence bin: confidence, accuracy, count
     plots/per_class/<name>.csv      accuracy of each class, grouped by superclass
     plots/predictions/<name>.csv    index,label,prediction,confidence,top5 of every test image
Refuses, writing nothing, a model trained on other prepared data than data/prepared holds now,
and a model that dvc.yaml does not list among this stage's deps.
"""
import json
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml

from src import model_file
from src.atomic import staged_dir
from src.data import splits
from src.errors import UserError, run
from src.evaluate import files, results, timing
from src.models.build import count_parameters
from src.params import load_params
from src.predict import build_trained, predict_logits
from src.provenance import data_hash
from src.runtime import Runtime, resolve

PREPARED = "data/prepared"


def main() -> None:
    params = load_params()
    runtime = resolve(params.runtime)
    batch_size = params.runtime.eval_batch_size
    test = splits.load(f"{PREPARED}/test.npz")
    # The augment stage writes val.npz exactly when data.val_size > 0.
    val = splits.load(f"{PREPARED}/val.npz") if Path(f"{PREPARED}/val.npz").is_file() else None
    classes = json.loads(Path(f"{PREPARED}/classes.json").read_text())
    archive_md5 = json.loads(Path(f"{PREPARED}/stats.json").read_text())["archive_md5"]
    prepared_hash = data_hash(PREPARED)
    names = params.model.names
    _check_declared(names)
    # Every model is checked before any is evaluated: a stale one fails in seconds.
    states = {name: model_file.read(model_file.path_of(name)) for name in names}
    for name, state in states.items():
        model_file.check_trained_on(state, model_file.path_of(name), prepared_hash)
    on_val = f" and {len(val['fine_labels'])} val images" if val is not None else ""
    print(f"evaluating {', '.join(names)} on {len(test['fine_labels'])} test images{on_val}, {_device(runtime)}")

    outputs, built = {}, {}
    for name, state in states.items():
        built[name] = model, normalize = build_trained(state, runtime)
        # Eager even with runtime.compile: compiling for one pass over 10,000 images (and for
        # each new batch shape) costs more than it saves.
        scored = {split: predict_logits(model, arrays["images"], normalize, runtime, batch_size,
                                        hflip_tta=params.evaluate.hflip_tta)
                  for split, arrays in (("test", test), ("val", val)) if arrays is not None}
        outputs[name] = results.model_results(scored["test"], test, classes)
        if val is not None:  # scored as the test split is, so that a choice on val carries over
            outputs[name]["metrics"]["val"] = results.heldout_scores(scored["val"], val["fine_labels"])
        outputs[name]["detail"].update(val_images=0 if val is None else len(val["fine_labels"]),
                                       hflip_tta=params.evaluate.hflip_tta, ema=bool(state.get("ema", False)),
                                       parameters=count_parameters(model),
                                       provenance=_provenance(state, runtime, archive_md5, prepared_hash))
        m = outputs[name]["metrics"]
        on_val = f" (val top1 {m['val']['top1']:.2f}%)" if val is not None else ""
        print(f"{name}: top1 {m['top1']:.2f}% top5 {m['top5']:.2f}% loss {m['loss']:.4f} ECE {m['ece']:.2f}%{on_val}")
    # Timed after every model is scored, the models taking turns (src/evaluate/timing.py).
    timings = timing.measure(built, test["images"], runtime, batch_size)
    for name, t in timings.items():
        t.update(device=_device(runtime), torch=str(torch.__version__))
        print(f"{name}: {t['throughput_img_s']:.0f} img/s (passes {t['throughput_img_s_range'][0]:.0f}-"
              f"{t['throughput_img_s_range'][1]:.0f}), {t['latency_ms']:.2f} ms/image "
              f"({t['latency_ms_range'][0]:.2f}-{t['latency_ms_range'][1]:.2f})")

    # Everything is computed before anything is written, and the new folders replace the old ones
    # only once all are written (each folder is one DVC output, so a model removed from params.yaml
    # leaves no file behind).
    with ExitStack() as folders:
        metrics_dir = folders.enter_context(staged_dir("metrics"))
        detail_dir, timing_dir = (folders.enter_context(staged_dir(f"evaluation/{f}")) for f in ("detail", "timing"))
        tables = {table: folders.enter_context(staged_dir(f"plots/{table}"))
                  for table in ("confusion", "reliability", "per_class", "predictions")}
        for name, output in outputs.items():
            files.write_json(metrics_dir / f"{name}.json", output["metrics"])
            files.write_json(detail_dir / f"{name}.json", output["detail"])
            files.write_json(timing_dir / f"{name}.json", timings[name])
            for table, folder in tables.items():
                files.write_csv(folder / f"{name}.csv", output[table])
        files.write_json(metrics_dir / "summary.json",
                         results.summary({name: o["metrics"] for name, o in outputs.items()},
                                         {name: o["correct"] for name, o in outputs.items()}))
    print("wrote metrics/, evaluation/, plots/confusion/, plots/reliability/, plots/per_class/, "
          "plots/predictions/")


def _check_declared(names: list[str]) -> None:
    """Every model of params.yaml has its train stage and is among this stage's deps in dvc.yaml:
    otherwise DVC would not re-evaluate it when it changes (docs/models.md)."""
    if not Path("dvc.yaml").is_file():
        return  # run outside the pipeline (a copy of the scripts alone)
    stages = yaml.safe_load(Path("dvc.yaml").read_text()).get("stages", {})
    deps = set(stages.get("evaluate", {}).get("deps", []))
    for name in names:
        if f"train-{name}" not in stages:
            problem = f"has no train-{name} stage"
        elif f"models/{name}.pt" not in deps:
            problem = f"does not list models/{name}.pt among evaluate's deps"
        else:
            continue
        raise UserError(f"params.yaml has a model.{name} block, but dvc.yaml {problem}: add it as docs/models.md "
                        "shows (or remove the block)")


def _device(runtime: Runtime) -> str:
    cuda = runtime.device.type == "cuda"
    name = torch.cuda.get_device_name(runtime.device) if cuda else runtime.device.type
    return f"{name}, {'bf16' if runtime.amp_dtype else 'fp32'}"


def _provenance(state: dict, runtime: Runtime, archive_md5: str, prepared_hash: str) -> dict:
    """What the numbers came from beyond dvc.lock: data, the model's training length (and the
    ImageNet weights it started from), device, torch."""
    trained = {key: state.get("params", {}).get(key) for key in ("epochs", "lr")}
    started = state.get("pretrained")  # the ImageNet weights file a pretrained model started from
    return {"archive_md5": archive_md5, "prepared_data_hash": prepared_hash,
            "device": _device(runtime), "torch": str(torch.__version__),
            "trained": {key: value for key, value in trained.items() if value is not None},
            **({"pretrained": started} if started else {})}


if __name__ == "__main__":
    run(main)

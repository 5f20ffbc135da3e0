"""Stage `report`: plots/report.md, a page that GitHub renders, with PNG figures.

    python -m stages.report              (run by `dvc repro report`)

In:  for every `model.<name>` block of params.yaml: metrics/<name>.json, evaluation/detail/<name>.json,
     evaluation/timing/<name>.json, plots/{reliability,predictions}/<name>.csv, plots/train/<name>/
     (DVCLive); metrics/summary.json (comparisons), data/prepared/classes.json; params reference
     (the published results), and seed, lr, epochs, batch_size, data, augment, model, train,
     evaluate, runtime (printed)
Out: plots/report.md      side-by-side results with intervals and, at the reference recipe's scale,
                          the difference to the published numbers; which differences are real,
                          per-class P/R/F1, pairs most confused, params and data hash
                          the numbers came from
     plots/report/*.png   training curves, confusion heatmaps, per-superclass accuracy, reliability
     plots/report/curves.csv  every model's curves in one table (model, step, ...): what
                          `dvc plots show` overlays, one colour per model
"""
import os

import yaml

from src.atomic import staged_dir, staged_file
from src.errors import UserError, run
from src.params import load_params
from src.report import figures, inputs, markdown, per_class

REPORT = "plots/report.md"
FIGURES = "plots/report"
PREVIEW = "plots/augment_preview.png"  # made by the augment stage: linked, not copied
BEST_WORST = 10  # classes listed at each end of the per-class table
PRINTED_PARAMS = ("seed", "lr", "epochs", "batch_size", "data", "augment", "model", "train", "evaluate",
                  "runtime")


def main() -> None:
    params = load_params()
    models = params.model.names  # the model.<name> blocks of params.yaml, in its order
    classes = inputs.read_json("data/prepared/classes.json", "augment")
    # Each model's headline metrics and its detail, as one dict per model.
    metrics = {m: {**inputs.read_json(f"metrics/{m}.json", "evaluate"),
                   **inputs.read_json(f"evaluation/detail/{m}.json", "evaluate")} for m in models}
    timing = {m: inputs.read_json(f"evaluation/timing/{m}.json", "evaluate") for m in models}
    curves = {m: inputs.training_curves(f"plots/train/{m}", m) for m in models}
    heldout = inputs.read_json(f"plots/train/{models[0]}/metrics.json", f"train-{models[0]}")
    heldout = heldout.get("heldout_split", "held-out").split()[0]
    reliability = {m: inputs.read_table(f"plots/reliability/{m}.csv", "evaluate") for m in models}
    comparisons = inputs.comparisons("metrics/summary.json")
    predictions = {m: inputs.read_table(f"plots/predictions/{m}.csv", "evaluate") for m in models}
    class_scores = {m: per_class.class_scores(predictions[m], classes["fine"]) for m in models}
    names, groups = inputs.class_order(classes)
    counts = {m: inputs.confusion_counts(predictions[m], classes["fine"], names) for m in models}
    departures = markdown.scale_departures(
        {"model.width": params.model.width, "data.train_limit": params.data.train_limit,
         "data.test_limit": params.data.test_limit, "data.val_size": params.data.val_size},
        {m: params.model_epochs(m) for m in models},
        {m: r.epochs for m, r in params.reference.items() if r.epochs is not None})
    data_hashes = {values["provenance"]["prepared_data_hash"] for values in metrics.values()}
    if len(data_hashes) != 1:
        raise UserError(f"the metrics files come from different prepared data ({sorted(data_hashes)}): "
                        "run `dvc repro` so that every model is trained and evaluated on the same data")

    names_of = {"curves": "curves.png", "superclass": "superclass_accuracy.png",
                "reliability": "reliability.png", **{f"confusion_{m}": f"confusion_{m}.png" for m in models}}
    # Links relative to report.md, so that they resolve on GitHub and in a checkout alike.
    here = os.path.dirname(REPORT)
    links = {key: os.path.relpath(f"{FIGURES}/{name}", here) for key, name in names_of.items()}
    links["augment_preview"] = os.path.relpath(PREVIEW, here)
    with staged_dir(FIGURES) as out:
        figures.training_curves(curves, heldout, out / names_of["curves"])
        inputs.all_curves(curves).to_csv(out / "curves.csv", index=False)
        for m in models:
            figures.confusion_heatmap(counts[m], groups, f"{m}: confusion on the test split, "
                                      f"top-1 {metrics[m]['top1']:.2f}%", out / names_of[f"confusion_{m}"])
        figures.superclass_bars({m: metrics[m]["per_superclass"] for m in models}, classes["coarse"],
                                out / names_of["superclass"])
        figures.reliability_diagrams(reliability, {m: metrics[m]["ece"] for m in models},
                                     out / names_of["reliability"])
        superclass_of = {name: group for group, start, end in groups for name in names[start:end]}
        pairs = markdown.confused_pairs(counts, names, [superclass_of[n] for n in names])
        best_worst = {m: per_class.best_and_worst(scores, BEST_WORST) for m, scores in class_scores.items()}
        values = params.model_dump(mode="json")
        printed = yaml.safe_dump({key: values[key] for key in PRINTED_PARAMS}, sort_keys=False)
        with staged_file(REPORT) as report:
            report.write_text(markdown.document(
                metrics, timing, links, heldout=heldout, pairs=pairs, comparisons=comparisons,
                per_class=markdown.per_class_section(best_worst), data_hash=data_hashes.pop(),
                params_yaml=printed, departures=departures,
                references={m: r.model_dump() for m, r in params.reference.items()}))
    print(f"wrote {REPORT} and {FIGURES}/")


if __name__ == "__main__":
    run(main)

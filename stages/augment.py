"""Stage `augment`: the prepared splits, offline copies and a preview of the augmentation.

    python -m stages.augment             (run by `dvc repro augment`)

In:  data/raw/, params seed, data.train_limit, data.test_limit, data.val_size, augment
Out: data/prepared/{train,test}.npz (+ val.npz when data.val_size > 0), per the data contract
     data/prepared/classes.json      class and superclass names, superclass of each class
     data/prepared/stats.json        per-channel mean/std of the training split, sizes, archive md5
     plots/augment_preview.png       training images through the shared pipeline, and with AutoAugment
Each train stage builds its own model's pipeline (src/augment/pipelines.py), so a model's
augmentation overrides never change data/prepared.
"""
import json

import numpy as np

from src.atomic import staged_dir, staged_file
from src.augment import pipelines
from src.augment.preview import save_preview
from src.data import splits
from src.errors import run
from src.params import load_params

RAW_DIR = "data/raw"
OUT_DIR = "data/prepared"
PREVIEW = "plots/augment_preview.png"


def main() -> None:
    params = load_params()
    meta = json.loads(open(f"{RAW_DIR}/meta.json").read())
    train = splits.first(splits.load(f"{RAW_DIR}/train.npz"), params.data.train_limit)
    test = splits.first(splits.load(f"{RAW_DIR}/test.npz"), params.data.test_limit)
    prepared = {"train": train, "test": test}
    if params.data.val_size > 0:
        train_index, val_index = splits.stratified_holdout(
            train["fine_labels"], params.data.val_size, params.seed)
        prepared.update(train=splits.take(train, train_index), val=splits.take(train, val_index))

    mean, std = splits.channel_stats(prepared["train"]["images"])
    standard = pipelines.split_normalize(pipelines.build_train(params.augment, mean, std))[0]
    standard.set_random_seed(params.seed)
    originals = prepared["train"]
    if params.augment.offline_copies > 0:
        # A published run's trick: a fixed set of augmented copies on top of the on-the-fly augmentation.
        copies = [{**originals, "images": pipelines.augment_batch(standard, originals["images"])}
                  for _ in range(params.augment.offline_copies)]
        prepared["train"] = {k: np.concatenate([originals[k]] + [c[k] for c in copies])
                             for k in splits.KEYS}

    with staged_dir(OUT_DIR) as out:
        for split, arrays in prepared.items():
            splits.save(out / f"{split}.npz", arrays)
        classes = {"fine": meta["fine_label_names"], "coarse": meta["coarse_label_names"],
                   "fine_to_coarse": splits.fine_to_coarse(train["fine_labels"], train["coarse_labels"])}
        (out / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        stats = {"mean": mean, "std": std, "archive_md5": meta["archive_md5"],
                 "sizes": {split: len(arrays["fine_labels"]) for split, arrays in prepared.items()}}
        (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        with staged_file(PREVIEW) as preview:
            sample = originals["images"][:params.augment.preview_images]
            autoaugment = pipelines.split_normalize(pipelines.build_train(params.augment, mean, std, 1.0))[0]
            autoaugment.set_random_seed(params.seed)
            save_preview({"original": sample,
                          "train pipeline": pipelines.augment_batch(standard, sample),
                          "train + AutoAugment": pipelines.augment_batch(autoaugment, sample)},
                         preview, columns=8)
    sizes = ", ".join(f"{split} {count:,}" for split, count in stats["sizes"].items())
    print(f"wrote {OUT_DIR}/ ({sizes} images) and {PREVIEW}")


if __name__ == "__main__":
    run(main)

"""The augment stage: splits, channel statistics, the pipelines built from params, and a peer check
of the prepared arrays against torchvision's CIFAR100 reader on the same archive."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from helpers import archive as ca
from helpers.archive import GENUINE_MD5, assert_equal_arrays
from helpers.project import ROOT, copy_working_tree
from src.augment import pipelines
from src.data.splits import channel_stats, stratified_holdout
from src.params import AugmentParams

# No pipelines: each train stage builds its own model's (src/augment/pipelines.py).
PREPARED_FILES = ["classes.json", "stats.json", "test.npz", "train.npz"]
# Everything the tests rely on is set explicitly: params.yaml defaults may change.
FULL_PARAMS = {"seed": 0, "data.train_limit": None, "data.test_limit": None, "data.val_size": 0,
               "augment.crop": "pad", "augment.crop_padding": 4, "augment.hflip_p": 0.5,
               "augment.cutout_size": 16, "augment.cutout_p": 0.5, "augment.offline_copies": 0,
               "augment.preview_images": 64}
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]


def load_split(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def random_images(n: int, seed: int = 0, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(n, 32, 32, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- stratified_holdout

def test_holdout_sizes_disjoint_and_complete():
    labels = np.random.default_rng(0).integers(0, 100, size=5000)
    for size in (1, 37, 500, 4999):
        train, held = stratified_holdout(labels, size, seed=0)
        assert len(held) == size and len(train) == len(labels) - size
        assert np.intersect1d(train, held).size == 0
        assert_equal_arrays(np.sort(np.concatenate([train, held])), np.arange(len(labels)))
        assert (np.diff(train) > 0).all() and (np.diff(held) > 0).all()  # sorted, no repeats


def test_holdout_size_zero_keeps_everything():
    labels = np.arange(50) % 5
    train, held = stratified_holdout(labels, 0, seed=0)
    assert len(held) == 0
    assert_equal_arrays(train, np.arange(50))


@pytest.mark.parametrize("size", [10, 123, 1000])
def test_holdout_is_proportional_per_class(size):
    """Each class gives floor or ceil of its share; imbalanced classes keep their ratio."""
    rng = np.random.default_rng(1)
    counts = rng.integers(5, 80, size=30)
    labels = rng.permutation(np.repeat(np.arange(30), counts))
    _, held = stratified_holdout(labels, size, seed=3)
    quota = counts * size / len(labels)
    got = np.bincount(labels[held], minlength=30)
    assert (got >= np.floor(quota)).all() and (got <= np.ceil(quota)).all(), (got, quota)
    assert got.sum() == size


def test_holdout_is_deterministic_by_seed():
    labels = np.random.default_rng(2).integers(0, 10, size=2000)
    first = stratified_holdout(labels, 200, seed=7)
    again = stratified_holdout(labels, 200, seed=7)
    other = stratified_holdout(labels, 200, seed=8)
    assert_equal_arrays(first[1], again[1])
    assert_equal_arrays(first[0], again[0])
    assert not np.array_equal(first[1], other[1])
    # a different seed changes which images, not how many per class
    assert_equal_arrays(np.bincount(labels[first[1]], minlength=10),
                        np.bincount(labels[other[1]], minlength=10))


# --------------------------------------------------------------------------- channel_stats

@pytest.mark.parametrize("n", [1, 7, 5000])  # 5000 images: more than one 4M-pixel chunk
def test_channel_stats_match_numpy(n):
    images = random_images(n, seed=n)
    images[..., 2] //= 3  # make the channels differ
    mean, std = channel_stats(images)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-6)
    assert len(mean) == len(std) == 3


def test_channel_stats_of_constant_images():
    images = np.zeros((10, 32, 32, 3), np.uint8) + np.array([0, 51, 255], np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, [0, 0.2, 1.0], atol=1e-6)
    np.testing.assert_allclose(std, [0, 0, 0], atol=1e-6)


# --------------------------------------------------------------------------- pipelines

@pytest.mark.parametrize("params, autoaugment", [
    (AugmentParams(), 0.0),
    (AugmentParams(), 1.0),
    (AugmentParams(crop="resized", resized_scale=(0.5, 1.0), resized_ratio=(0.9, 1.1), hflip_p=0.3), 0.0),
    (AugmentParams(cutout_size=8, cutout_p=1.0, crop_padding=2, cutout_inside=True), 0.7),
])
def test_pipeline_is_random_and_repeatable_from_its_seed(params, autoaugment):
    """Two builds from the same params give the same images for the same seed (what a resumed
    run and another process rely on), another seed gives others."""
    images = random_images(16)

    def apply(seed):
        pipeline = pipelines.build_train(params, MEAN, STD, autoaugment=autoaugment)
        pipeline.set_random_seed(seed)
        return np.stack([pipeline(image=image)["image"] for image in images])

    out = apply(5)
    assert out.dtype == np.float32 and out.shape == (16, 32, 32, 3)
    assert_equal_arrays(apply(5), out, "two builds, one seed")
    assert not np.array_equal(apply(6), out), "the pipeline is not random"


def test_resnet50_pipeline_is_its_references():
    """RandomResizedCrop(scale 0.8-1, ratio 0.9-1.1), flip, AutoAugment on 70%, Cutout, Normalize."""
    from src.params import load_params

    params = load_params(ROOT / "params.yaml")  # the models are its blocks
    steps = pipelines.build_train(params.model_augment("resnet50"), MEAN, STD,
                                  params.recipe("resnet50").autoaugment).transforms
    assert [type(t).__name__ for t in steps] == ["RandomResizedCrop", "HorizontalFlip", "AutoAugment",
                                                  "ClippedCutout", "Normalize"]
    assert steps[0].scale == (0.8, 1.0) and steps[0].ratio == (0.9, 1.1) and steps[2].p == 0.7
    assert [type(t).__name__ for t in pipelines.build_train(params.model_augment("resnet18"), MEAN, STD,
                                                             params.recipe("resnet18").autoaugment).transforms] == [
        "Pad", "RandomCrop", "HorizontalFlip", "ClippedCutout", "Normalize"]


def test_autoaugment_step_is_torchvisions_cifar10_policy():
    """The step runs torchvision's v2.AutoAugment(CIFAR10) itself: the same image as torchvision's
    for the torch seed the step drew, and the caller's torch generator is left alone."""
    import torch
    from torchvision.transforms import v2

    from src.augment.autoaugment import AutoAugment

    step, reference = AutoAugment(p=1.0), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    step.set_random_seed(0)
    changed = 0
    for image in random_images(64, seed=3):
        torch_seed = step.get_params()["torch_seed"]
        state = torch.random.get_rng_state()
        out = step.apply(image, torch_seed=torch_seed)
        assert torch.equal(torch.random.get_rng_state(), state)
        torch.manual_seed(torch_seed)
        expected = reference(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        assert_equal_arrays(out, expected, "AutoAugment step vs torchvision")
        changed += not np.array_equal(out, image)
    assert changed > 32  # most sub-policies change the image


def test_autoaugment_probability():
    from src.augment.autoaugment import AutoAugment

    step = A.Compose([AutoAugment(p=0.7)], save_applied_params=True)
    step.set_random_seed(0)
    applied = np.mean([len(step(image=image)["applied_transforms"]) for image in random_images(400, seed=1)])
    assert 0.63 < applied < 0.77


def test_train_pipeline_hflip_only_mirrors():
    params = AugmentParams(crop_padding=0, hflip_p=1.0, cutout_size=0)
    uint8_part, mean, std = pipelines.split_normalize(pipelines.build_train(params, MEAN, STD))
    images = random_images(8)
    assert_equal_arrays(pipelines.augment_batch(uint8_part, images), images[:, :, ::-1])
    np.testing.assert_allclose(mean, MEAN, rtol=1e-6)
    np.testing.assert_allclose(std, STD, rtol=1e-6)
    full = pipelines.build_train(params, MEAN, STD)
    out = full(image=images[0])["image"]
    np.testing.assert_allclose(out, (images[0, :, ::-1] / 255 - MEAN) / STD, atol=1e-5)


def test_train_pipeline_pads_and_crops():
    """Padding 4 + random 32x32 crop: each output is the zero-padded input shifted by <= 4."""
    params = AugmentParams(crop_padding=4, crop_fill="black", hflip_p=0.0, cutout_size=0)
    uint8_part, _, _ = pipelines.split_normalize(pipelines.build_train(params, MEAN, STD))
    uint8_part.set_random_seed(0)
    images = random_images(40, low=1)  # no zeros, so the padding shows
    out = pipelines.augment_batch(uint8_part, images)
    shifts = set()
    for image, crop in zip(images, out):
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if np.array_equal(padded[dy:dy + 32, dx:dx + 32], crop)]
        assert len(found) == 1, "output is not a padded crop of the input"
        shifts.add(found[0])
    assert len(shifts) > 5, f"crops are not random: {shifts}"


def test_train_pipeline_cutout_inside():
    params = AugmentParams(crop_padding=0, hflip_p=0.0, cutout_size=16, cutout_p=1.0, cutout_inside=True)
    mean = [0.04, 0.08, 0.12]  # fill colour round(mean * 255) = (10, 20, 31)
    uint8_part, _, _ = pipelines.split_normalize(pipelines.build_train(params, mean, STD))
    uint8_part.set_random_seed(0)
    images = random_images(50, low=100, high=200)  # never the fill colour
    out = pipelines.augment_batch(uint8_part, images)
    corners = set()
    for image, result in zip(images, out):
        changed = (image != result).any(-1)
        ys, xs = np.nonzero(changed)
        assert changed.sum() == 16 * 16
        assert ys.max() - ys.min() == 15 and xs.max() - xs.min() == 15  # one 16x16 square
        assert (result[changed] == [10, 20, 31]).all()
        corners.add((ys.min(), xs.min()))
    assert len(corners) > 10


def test_train_pipeline_cutout_clipped_at_the_border():
    """DeVries & Taylor's Cutout (the default): the hole's centre anywhere, clipped at the border."""
    params = AugmentParams(crop_padding=0, hflip_p=0.0, cutout_size=16, cutout_p=1.0)
    uint8_part, _, _ = pipelines.split_normalize(pipelines.build_train(params, [0.04, 0.08, 0.12], STD))
    uint8_part.set_random_seed(0)
    images = random_images(400, low=100, high=200)
    areas = []
    for image, result in zip(images, pipelines.augment_batch(uint8_part, images)):
        changed = (image != result).any(-1)
        ys, xs = np.nonzero(changed)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert changed.sum() == height * width and (result[changed] == [10, 20, 31]).all()  # one rectangle
        # centre c in [0, 32): rows max(c - 8, 0) .. min(c + 8, 32)
        assert height == 16 or ys.min() == 0 or ys.max() == 31
        assert 8 <= height <= 16 and 8 <= width <= 16
        areas.append(height * width)
    assert min(areas) < 100 and max(areas) == 256
    lengths = [min(c + 8, 32) - max(c - 8, 0) for c in range(32)]
    assert abs(np.mean(areas) - (np.mean(lengths)) ** 2) < 8  # 14^2 = 196 on average, not 256


def test_cutout_probability():
    params = AugmentParams(crop_padding=0, hflip_p=0.0, cutout_size=16, cutout_p=0.5)
    uint8_part, _, _ = pipelines.split_normalize(pipelines.build_train(params, MEAN, STD))
    uint8_part.set_random_seed(0)
    images = random_images(400, low=200)  # never the fill colour (mean 0.5 -> 128)
    out = pipelines.augment_batch(uint8_part, images)
    with_hole = (out != images).any(axis=(1, 2, 3)).mean()
    assert 0.4 < with_hole < 0.6


def test_no_cutout_when_size_or_probability_is_zero():
    for params in (AugmentParams(cutout_size=0), AugmentParams(cutout_p=0.0)):
        built = pipelines.build_train(params, MEAN, STD)
        assert not any(isinstance(t, A.CoarseDropout) for t in built.transforms)


def test_split_normalize_refuses_a_pipeline_without_normalize():
    with pytest.raises(ValueError):
        pipelines.split_normalize(A.Compose([A.HorizontalFlip(p=1.0)]))


# --------------------------------------------------------------------------- the stage

def _augment(tmp_path_factory, downloaded, name: str, params: dict):
    source, _, result = downloaded
    assert result.returncode == 0, result.stderr[-3000:]
    project = copy_working_tree(tmp_path_factory.mktemp(name) / "project", git=False)
    project.link_raw_from(source)
    project.set_params(params)
    result = project.stage("augment")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return project, result


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, downloaded):
    """download + augment on the generated archive, all images, no hold-out."""
    project, _ = _augment(tmp_path_factory, downloaded, "prepared", FULL_PARAMS)
    return project


LIMITED = {**FULL_PARAMS, "data.train_limit": 3000, "data.test_limit": 700, "data.val_size": 300,
           "augment.offline_copies": 1, "augment.preview_images": 16, "seed": 4}


@pytest.fixture(scope="module")
def prepared_limited(tmp_path_factory, downloaded):
    project, _ = _augment(tmp_path_factory, downloaded, "prepared_limited", LIMITED)
    return project


def extract(archive: Path, root: Path) -> Path:
    """Extract an archive as torchvision's download() would leave it: root/cifar-100-python/."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")
    return root


def _torchvision_split(root: Path, split: str, official: bool):
    from torchvision.datasets import CIFAR100

    class SyntheticCIFAR100(CIFAR100):
        """torchvision's reader, unchanged, minus the md5s of the official files.

        check_integrity(path, None) still requires every file to exist.
        """
        train_list = [[name, None] for name, _ in CIFAR100.train_list]
        test_list = [[name, None] for name, _ in CIFAR100.test_list]
        meta = {**CIFAR100.meta, "md5": None}

    reader = (CIFAR100 if official else SyntheticCIFAR100)(str(root), train=split == "train",
                                                          download=False)
    return reader


def _peer_check(project, root: Path, split: str, official: bool) -> None:
    ours = load_split(project.root / "data" / "prepared" / f"{split}.npz")
    theirs = _torchvision_split(root, split, official)
    assert ours["images"].dtype == np.uint8 and ours["images"].shape[1:] == (32, 32, 3)
    assert len(ours["images"]) == len(theirs) == {"train": 50_000, "test": 10_000}[split]
    assert_equal_arrays(ours["images"], theirs.data, f"{split} images vs torchvision")
    assert_equal_arrays(ours["fine_labels"], np.asarray(theirs.targets), f"{split} labels vs torchvision")
    image, target = theirs[123]  # torchvision's own item access: a PIL image and an int
    assert_equal_arrays(ours["images"][123], np.asarray(image))
    assert ours["fine_labels"][123] == target
    classes = json.loads((project.root / "data" / "prepared" / "classes.json").read_text())
    assert classes["fine"] == theirs.classes


@pytest.fixture(scope="module")
def torchvision_root(tmp_path_factory, cifar_archive) -> Path:
    return extract(cifar_archive.path, tmp_path_factory.mktemp("torchvision"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_prepared_equals_torchvision(split, prepared, torchvision_root, cifar_archive):
    _peer_check(prepared, torchvision_root, split, official=False)
    ours = load_split(prepared.root / "data" / "prepared" / f"{split}.npz")
    # torchvision has no coarse labels: compare with what was pickled
    assert_equal_arrays(ours["coarse_labels"], cifar_archive.expected(split)["coarse_labels"])


def test_prepared_files(prepared):
    folder = prepared.root / "data" / "prepared"
    assert sorted(p.name for p in folder.iterdir()) == PREPARED_FILES  # no val.npz, no temp files
    for split in ("train", "test"):
        arrays = load_split(folder / f"{split}.npz")
        assert sorted(arrays) == ["coarse_labels", "fine_labels", "images"]
        assert arrays["images"].dtype == np.uint8
        assert arrays["fine_labels"].dtype.kind in "iu" and arrays["coarse_labels"].dtype.kind in "iu"
        assert len(arrays["images"]) == len(arrays["fine_labels"]) == len(arrays["coarse_labels"])


def test_classes_json(prepared):
    classes = json.loads((prepared.root / "data" / "prepared" / "classes.json").read_text())
    assert classes["fine"] == ca.FINE_NAMES
    assert classes["coarse"] == ca.COARSE_NAMES
    assert classes["fine_to_coarse"] == [fine // 5 for fine in range(100)]


def test_stats_json(prepared, cifar_archive):
    stats = json.loads((prepared.root / "data" / "prepared" / "stats.json").read_text())
    images = cifar_archive.expected("train")["images"]
    levels = np.arange(256) / 255
    for channel in range(3):  # exact moments from each channel's histogram of pixel levels
        histogram = np.bincount(images[..., channel].ravel(), minlength=256) / images[..., 0].size
        mean = histogram @ levels
        std = np.sqrt(histogram @ (levels - mean) ** 2)
        assert stats["mean"][channel] == pytest.approx(mean, abs=2e-6)
        assert stats["std"][channel] == pytest.approx(std, abs=2e-6)
    assert stats["archive_md5"] == cifar_archive.md5
    assert stats["sizes"] == {"train": 50_000, "test": 10_000}


def test_preview_png(prepared):
    from PIL import Image

    path = prepared.root / "plots" / "augment_preview.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width > 2 * height > 200  # three panels side by side
    assert pixels.std() > 10  # not a blank figure


# --------------------------------------------------------------------------- limits and hold-out

def _index_of_images(images: np.ndarray) -> dict[bytes, int]:
    index = {image.tobytes(): i for i, image in enumerate(images)}
    assert len(index) == len(images), "test images must be unique"
    return index


def test_limits_and_stratified_validation_split(prepared_limited, cifar_archive):
    folder = prepared_limited.root / "data" / "prepared"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PREPARED_FILES, "val.npz"])
    raw_train = {k: v[:3000] for k, v in cifar_archive.expected("train").items()}
    raw_test = {k: v[:700] for k, v in cifar_archive.expected("test").items()}

    test = load_split(folder / "test.npz")
    for key in test:
        assert_equal_arrays(test[key], raw_test[key], f"test {key}")

    train, val = load_split(folder / "train.npz"), load_split(folder / "val.npz")
    originals = {k: v[:2700] for k, v in train.items()}  # then one augmented copy of each
    assert len(val["images"]) == 300 and len(train["images"]) == 2 * 2700
    index = _index_of_images(raw_train["images"])
    train_idx = np.array([index[image.tobytes()] for image in originals["images"]])
    val_idx = np.array([index[image.tobytes()] for image in val["images"]])
    # val and train partition the first 3000 images, each kept in the archive's order
    assert set(train_idx).isdisjoint(val_idx)
    assert_equal_arrays(np.sort(np.concatenate([train_idx, val_idx])), np.arange(3000))
    assert (np.diff(train_idx) > 0).all() and (np.diff(val_idx) > 0).all()
    for split, arrays, idx in (("train", originals, train_idx), ("val", val, val_idx)):
        for key in ("fine_labels", "coarse_labels"):
            assert_equal_arrays(arrays[key], raw_train[key][idx], f"{split} {key}")
    # stratified: each class gives floor or ceil of 10% of its images
    counts = np.bincount(raw_train["fine_labels"], minlength=100)
    got = np.bincount(val["fine_labels"], minlength=100)
    assert (got >= np.floor(counts * 0.1)).all() and (got <= np.ceil(counts * 0.1)).all()

    stats = json.loads((folder / "stats.json").read_text())
    assert stats["sizes"] == {"train": 5400, "test": 700, "val": 300}
    mean, std = channel_stats(originals["images"])  # statistics of the training images only
    np.testing.assert_allclose(stats["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(stats["std"], std, atol=1e-6)


def test_offline_copies_are_augmented_versions(prepared_limited):
    train = load_split(prepared_limited.root / "data" / "prepared" / "train.npz")
    originals, copies = (train["images"][:2700], train["images"][2700:])
    for key in ("fine_labels", "coarse_labels"):
        assert_equal_arrays(train[key][2700:], train[key][:2700])
    differs = (originals != copies).any(axis=(1, 2, 3))
    assert differs.mean() > 0.8, "the copies are not augmented"
    # pad 4 + crop keeps most of the image: the copy still has the class colour on average
    assert np.abs(originals.mean((1, 2)) - copies.mean((1, 2))).mean() < 40


def test_validation_split_uses_the_seed_param(prepared_limited, cifar_archive):
    """The hold-out is stratified_holdout(labels of the first train_limit images, val_size, seed)."""
    val = load_split(prepared_limited.root / "data" / "prepared" / "val.npz")
    raw = cifar_archive.expected("train")
    _, held = stratified_holdout(raw["fine_labels"][:3000], 300, seed=LIMITED["seed"])
    assert_equal_arrays(val["images"], raw["images"][held])
    _, other_seed = stratified_holdout(raw["fine_labels"][:3000], 300, seed=LIMITED["seed"] + 1)
    assert not np.array_equal(held, other_seed)


# --------------------------------------------------------------------------- the genuine archive

@pytest.fixture(scope="module")
def genuine_prepared(tmp_path_factory, genuine_archive):
    project = copy_working_tree(tmp_path_factory.mktemp("genuine_prepared") / "project", git=False)
    project.set_params({**FULL_PARAMS, "data.url": str(genuine_archive), "data.md5": GENUINE_MD5,
                        "augment.preview_images": 16})
    for stage in ("download", "augment"):
        result = project.stage(stage)
        assert result.returncode == 0, result.stderr[-3000:]
    root = extract(genuine_archive, tmp_path_factory.mktemp("genuine_torchvision"))
    return project, root


@pytest.mark.parametrize("split", ["train", "test"])
def test_genuine_archive_equals_torchvision(split, genuine_prepared):
    """The real CIFAR-100, read by torchvision with its official md5 checks left on."""
    import pickle

    project, root = genuine_prepared
    _peer_check(project, root, split, official=True)
    with open(root / "cifar-100-python" / split, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    ours = load_split(project.root / "data" / "prepared" / f"{split}.npz")
    assert_equal_arrays(ours["coarse_labels"], np.asarray(entry["coarse_labels"]))


def test_genuine_archive_stats_and_classes(genuine_prepared):
    project, _ = genuine_prepared
    folder = project.root / "data" / "prepared"
    stats = json.loads((folder / "stats.json").read_text())
    # the well-known CIFAR-100 training-set statistics
    np.testing.assert_allclose(stats["mean"], [0.5071, 0.4865, 0.4409], atol=2e-4)
    np.testing.assert_allclose(stats["std"], [0.2673, 0.2564, 0.2762], atol=2e-4)
    assert stats["archive_md5"] == GENUINE_MD5
    classes = json.loads((folder / "classes.json").read_text())
    assert classes["fine"][:3] == ["apple", "aquarium_fish", "baby"]
    assert classes["coarse"][0] == "aquatic_mammals" and len(classes["coarse"]) == 20
    assert classes["fine_to_coarse"][classes["fine"].index("apple")] == \
        classes["coarse"].index("fruit_and_vegetables")

"""The batch crop/flip/cutout (in loader workers, and on the GPU) against albumentations for the
same random draws; the loader's batches; and the GPU path run on CPU: a whole training run with
torch.compile and on-device augmentation."""
from __future__ import annotations

import shutil

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from helpers.models import build_model
from helpers.project import clone, train, weights
from src.augment import pipelines
from src.augment.batch_ops import CropFlipCutout, DeviceBatches
from src.params import AugmentParams, RuntimeParams
from src.runtime import resolve
from src.train.data import LoaderBatches

# runtime.* stays on auto here: with a GPU these tests take the CUDA path.
pytestmark = pytest.mark.gpu

MEAN, STD = [0.507, 0.487, 0.441], [0.267, 0.256, 0.276]


def uint8_part(**augment):
    return pipelines.split_normalize(pipelines.build_train(AugmentParams(**augment), MEAN, STD))[0]


def albumentations_reference(pipeline, image, draws, i, padding, hole):
    """The pipeline's own transforms applied with the draws the batch op made."""
    out = image
    for t in pipeline.transforms:
        name = type(t).__name__
        if name == "Pad":
            out = t.apply(out, pad_top=padding, pad_bottom=padding, pad_left=padding, pad_right=padding)
        elif name == "RandomCrop":
            y, x = int(draws.crop_y[i]), int(draws.crop_x[i])
            out = t.apply(out, crop_coords=(x, y, x + 32, y + 32))
        elif name == "HorizontalFlip" and draws.flip[i]:
            out = t.apply(out)
        elif name in ("CoarseDropout", "ClippedCutout") and draws.cutout[i]:
            y, x = int(draws.hole_y[i]), int(draws.hole_x[i])  # a clipped hole's corner may be outside
            holes = np.array([[max(x, 0), max(y, 0), min(x + hole, 32), min(y + hole, 32)]])
            out = t.apply(out, holes=holes, seed=0)
    return out


@pytest.mark.parametrize("augment", [{}, {"crop_padding": 0}, {"crop_padding": 2, "cutout_size": 8},
                                     {"cutout_size": 0, "hflip_p": 1.0}, {"cutout_inside": True},
                                     {"cutout_size": 7, "cutout_p": 1.0}, {"crop_fill": "black"},
                                     {"crop_fill": "mean"}, {"crop_fill": "reflect"},
                                     {"crop_fill": "reflect", "crop_padding": 12, "hflip_p": 1.0}])
def test_batch_op_equals_albumentations_for_the_same_draws(augment):
    pipeline = uint8_part(**augment)
    op = CropFlipCutout.from_pipeline(pipeline)
    assert op is not None and op.clipped == (not augment.get("cutout_inside", False))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8))
    draws = op.draw(len(images), torch.Generator().manual_seed(1), torch.device("cpu"))
    out = op.apply(images, draws).numpy()
    for i in range(len(images)):
        expected = albumentations_reference(pipeline, images[i].numpy(), draws, i, op.padding, op.hole)
        np.testing.assert_array_equal(out[i], expected, err_msg=f"image {i}")
    if op.hole:  # the cutout fill is the mean colour, which Normalize maps to about 0
        assert op.fill == tuple(round(m * 255) for m in MEAN)
    fill = augment.get("crop_fill", "mean")  # and the crop's padding is what augment.crop_fill says (default mean)
    if op.padding:  # (no padding, nothing to fill)
        assert op.pad_reflect == (fill == "reflect")
        assert op.pad_fill == (tuple(round(m * 255) for m in MEAN) if fill == "mean" else (0, 0, 0))


def test_draws_follow_the_params():
    op = CropFlipCutout.from_pipeline(uint8_part(crop_padding=4, hflip_p=0.5, cutout_p=0.5))
    draws = op.draw(20_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert draws.crop_y.min() == 0 and draws.crop_y.max() == 8
    # DeVries & Taylor's Cutout: the centre anywhere in the image, so the corner of a 16-pixel hole
    # runs from -8 to 23 and the hole is clipped at the border.
    assert draws.hole_x.min() == -8 and draws.hole_x.max() == 23
    assert abs(draws.flip.float().mean() - 0.5) < 0.02 and abs(draws.cutout.float().mean() - 0.5) < 0.02
    inside = CropFlipCutout.from_pipeline(uint8_part(cutout_inside=True))
    draws = inside.draw(20_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert draws.hole_x.min() == 0 and draws.hole_x.max() == 16


def test_clipped_cutout_covers_what_devries_and_taylor_cover():
    """On average a clipped 16-pixel hole covers 16 * (1 - 1/4 * 16/32)... exactly: the expected
    clipped length per axis of a centre uniform over 0..31, checked against the op's own holes."""
    op = CropFlipCutout(0, 0.0, 16, 1.0, (0, 0, 0), clipped=True)
    images = torch.full((4000, 32, 32, 3), 255, dtype=torch.uint8)
    out = op.apply(images, op.draw(len(images), torch.Generator().manual_seed(0), torch.device("cpu")))
    covered = (out[..., 0] == 0).sum((1, 2)).double()
    lengths = [min(c + 8, 32) - max(c - 8, 0) for c in range(32)]  # DeVries: clip(y -+ 8, 0, 32)
    expected = (sum(lengths) / 32) ** 2
    assert abs(covered.mean().item() - expected) < 3 and covered.max() == 256 and covered.min() == 64


def autoaugment_part():
    return pipelines.split_normalize(pipelines.build_train(AugmentParams(), MEAN, STD, autoaugment=1.0))[0]


def test_pipelines_beyond_crop_flip_cutout_go_through_albumentations():
    assert CropFlipCutout.from_pipeline(autoaugment_part()) is None
    assert CropFlipCutout.from_pipeline(uint8_part(crop="resized")) is None
    pad, crop, flip, cutout = uint8_part().transforms
    # The same steps in another order, or a pad without its crop, are not the batch op's image.
    assert CropFlipCutout.from_pipeline(A.Compose([flip, pad, crop, cutout])) is None
    assert CropFlipCutout.from_pipeline(A.Compose([cutout, pad, crop])) is None
    assert CropFlipCutout.from_pipeline(A.Compose([pad, flip])) is None
    # A border the op does not mirror (cv2's BORDER_REFLECT repeats the edge pixel; augment.crop_fill's
    # reflect is BORDER_REFLECT_101, which the op covers).
    assert CropFlipCutout.from_pipeline(A.Compose([A.Pad(4, border_mode=cv2.BORDER_REFLECT), crop])) is None
    assert CropFlipCutout.from_pipeline(A.Compose([A.Pad(4, border_mode=cv2.BORDER_REFLECT_101), crop])).pad_reflect
    assert CropFlipCutout.from_pipeline(A.Compose([crop, flip])) == CropFlipCutout(0, 0.5, 0, 0.0, (0, 0, 0))


@pytest.mark.parametrize("pipeline, batch_op", [(uint8_part, True), (autoaugment_part, False)])
def test_loader_batches_use_the_batch_op_and_do_not_depend_on_the_worker_count(pipeline, batch_op):
    images = np.random.default_rng(0).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(96)
    epochs = {}
    for workers in (0, 2):
        loader = LoaderBatches(images, labels, pipeline(), 32, 3, workers=workers, pin_memory=False)
        assert (loader.loader.dataset.batch_op is not None) == batch_op
        epochs[workers] = [(x.clone(), y.clone()) for x, y in loader]
    assert len(epochs[0]) == len(epochs[2]) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epochs[0], epochs[2]))
    for x, y in epochs[0]:
        assert x.dtype == torch.uint8 and x.shape == (32, 32, 32, 3)
        assert not torch.equal(x, torch.from_numpy(images[y.numpy()])), "the batch was augmented"


@pytest.mark.parametrize("pipeline", [uint8_part, autoaugment_part])
def test_the_shards_of_a_batch_are_the_single_process_batch(pipeline):
    """Each training process's shard holds the images, augmented the same way, that one process
    would have at those places of the batch (loader workers: batch op, or albumentations)."""
    images = np.random.default_rng(0).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(96)

    def epoch(shard=slice(None)):
        return list(LoaderBatches(images, labels, pipeline(), 32, 3, workers=0, pin_memory=False, shard=shard))

    whole, halves = epoch(), [epoch(slice(0, 16)), epoch(slice(16, 32))]
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), x)
        assert torch.equal(torch.cat([halves[0][i][1], halves[1][i][1]]), y)
    on_device = [DeviceBatches(images, labels, CropFlipCutout.from_pipeline(uint8_part()), 32, 7,
                               torch.device("cpu"), shard) for shard in (slice(None), slice(0, 16), slice(16, 32))]
    for (x, y), (a, ya), (b, yb) in zip(*on_device):
        assert torch.equal(torch.cat([a, b]), x) and torch.equal(torch.cat([ya, yb]), y)


def test_device_batches_repeat_per_epoch_and_cover_the_split():
    images = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(100)
    batches = DeviceBatches(images, labels, CropFlipCutout.from_pipeline(uint8_part()), 32, 7,
                            torch.device("cpu"))
    first = [(x.clone(), y.clone()) for x, y in batches]
    assert len(first) == len(batches) == 3 and all(x.shape == (32, 32, 32, 3) for x, _ in first)
    assert len(set(torch.cat([y for _, y in first]).tolist())) == 96  # no repeats in an epoch
    again = list(batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again)), "same epoch, same batches"
    batches.set_epoch(1)
    assert not torch.equal(next(iter(batches))[1], first[0][1]), "a new epoch reshuffles"


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_the_gpu_path_trains_on_cpu_with_compile_and_on_device_augmentation(prepared, tmp_path):
    """What a GPU run does (torch.compile, batches from DeviceBatches), run on CPU tensors:
    the plumbing around them (train/eval switches, resume state, the model file) holds, and
    the model compiles once: no graph break, no recompilation between epochs and evaluations."""
    project = clone(prepared, tmp_path / "gpu-path")
    # Zero-initialised residuals: at width 4 and 45 steps with the standard init, held-out
    # accuracy hangs on the trajectory (eager 10.3-10.7%, compiled 4.3% from float rounding
    # alone, with the same training loss); identity blocks steady it (15%), so the > 10% check
    # below tests the plumbing, not the luck of one trajectory.
    project.set_params({"runtime.compile": True, "runtime.gpu_augment": True, "model.zero_init_residual": True})
    project.env["TORCH_LOGS"] = "recompiles,graph_breaks"  # dynamo logs each one to stderr
    result = train(project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Recompiling function" not in result.stderr, result.stderr[-3000:]
    assert "Graph break" not in result.stderr, result.stderr[-3000:]
    assert "compile=True, gpu_augment=True" in result.stdout
    assert "augmenting in DataLoader workers instead" not in result.stdout
    state = weights(project)
    expected = resolve(RuntimeParams(compile=True, gpu_augment=True))  # device auto: CUDA where there is one
    assert state["params"]["runtime"] == {"device": str(expected.device), "compile": True, "gpu_augment": True,
                                          "precision": expected.precision, "deterministic": False,
                                          "processes": 1, "sync_batchnorm": False,
                                          "channels_last": expected.channels_last}
    # The file holds the plain module's weights (no torch.compile `_orig_mod.` prefix), so
    # evaluate and any user load them into an uncompiled model.
    model = build_model("resnet18", width=state["width"])
    model.load_state_dict(state["state_dict"])  # strict
    history = state["history"]
    assert len(history) == 3 and history[-1]["heldout_acc"] > 10, history
    print(result.stdout)

"""`python -m src.classify` and the image handling of src/images.py.

The command runs as a subprocess in a project copy where the real stages trained three
tiny models and evaluated them (tests/helpers/inference.py); its probabilities are
checked against the evaluate code's logits for the same test images.
"""
from __future__ import annotations

import json
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.commands import ok
from helpers.inference import PARTIAL_MODEL, classify, partial_project, save_pngs, split_images, trained_project
from helpers.models import MODELS
from src import classifier, images, model_file
from src.errors import UserError
from src.params import RuntimeParams
from src.predict import build_trained, predict_logits
from src.provenance import data_hash
from src.runtime import resolve


@pytest.fixture(scope="module")
def project(tmp_path_factory, downloaded):
    return trained_project(tmp_path_factory, downloaded)


@pytest.fixture(scope="module")
def partial(tmp_path_factory, project):
    return partial_project(tmp_path_factory, project)


def evaluate_probabilities(project, name: str, images: np.ndarray) -> np.ndarray:
    """Softmax of the logits that stages/evaluate.py computes for `images` with models/<name>.pt."""
    prepared = project.root / "data" / "prepared"
    path = project.root / "models" / f"{name}.pt"
    state = model_file.read(path)
    model_file.check_trained_on(state, path, data_hash(prepared))
    runtime = resolve(RuntimeParams(device="cpu"))
    model, normalize = build_trained(state, runtime)
    return predict_logits(model, images, normalize, runtime, batch_size=64).softmax(1).numpy()


# --------------------------------------------------------------------------- the command

@pytest.mark.parametrize("name", ["resnet18", "resnet50"])  # BasicBlock and Bottleneck
def test_probabilities_equal_the_evaluate_stage_softmax(project, tmp_path, name):
    images, _ = split_images(project)
    images = images[:12]
    paths = save_pngs(images[:6], tmp_path / "png") + save_pngs(images[6:], tmp_path / "png" / "nested", first=6)
    result = ok(classify(project, tmp_path / "png", "--model", name, "--top", "100", "--json", "--device", "cpu"))
    output = json.loads(result.stdout)
    classes = json.loads((project.root / "data/prepared/classes.json").read_text())["fine"]
    expected = evaluate_probabilities(project, name, images)
    predictions = pd.read_csv(project.root / f"plots/predictions/{name}.csv")  # the stage's own output
    by_path = {Path(entry["path"]).name: entry for entry in output}
    assert len(output) == 12 and sorted(by_path) == sorted(p.name for p in paths)  # folders recursively
    for index, path in enumerate(sorted(paths, key=lambda p: p.name)):
        rows = by_path[path.name]["predictions"]
        got = np.array([row["probability"] for row in rows])
        assert (np.diff(got) <= 0).all(), "best first"
        order = [classes.index(row["class"]) for row in rows]
        assert sorted(order) == list(range(100))
        np.testing.assert_allclose(got, expected[index][order], atol=1e-5, rtol=0)
        assert got[0] == pytest.approx(predictions["confidence"][index], abs=1e-4)
        # The same class as the stage's, up to float noise that may swap near-ties of untrained models.
        assert expected[index][order[0]] >= expected[index][predictions["prediction"][index]] - 1e-6


def test_default_is_the_best_test_top1_and_the_output_is_readable(project, tmp_path):
    summary = json.loads((project.root / "metrics/summary.json").read_text())
    best = max(MODELS, key=lambda name: summary[name]["top1"])
    [png] = save_pngs(split_images(project)[0][:1], tmp_path)
    result = ok(classify(project, png, "--top", "3"))
    assert f"using {best} (models/{best}.pt): the best test top-1 in metrics/summary.json" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(png) and len(lines) == 4
    model = classifier.load_classifier(project.root / "models" / f"{best}.pt", classifier.inference_runtime("cpu"))
    for line, (name, probability) in zip(lines[1:], model.top(images.load_image(png), 3)):
        assert line.split() == [name, f"{100 * probability:.2f}%"]


def test_without_metrics_a_trained_model_is_used_and_named(partial, tmp_path):
    [png] = save_pngs(np.zeros((1, 32, 32, 3), np.uint8), tmp_path)
    result = ok(classify(partial, png, "--json"))
    assert f"using {PARTIAL_MODEL} (models/{PARTIAL_MODEL}.pt): no test metrics" in result.stderr
    [entry] = json.loads(result.stdout)
    assert entry["path"] == str(png) and len(entry["predictions"]) == 5


def test_bad_inputs_get_one_line_each_and_the_rest_are_classified(project, tmp_path):
    good = save_pngs(split_images(project)[0][:2], tmp_path / "good")
    bad = {
        tmp_path / "missing.png": "no such file or folder",
        tmp_path / "notes.png": "not an image",
        tmp_path / "truncated.jpg": "truncated or corrupt image",
        tmp_path / "bomb.png": "decompression bomb",
        tmp_path / "huge.png": "decompression bomb",
        tmp_path / "empty": "folder holds no image files",
    }
    (tmp_path / "notes.png").write_text("just text\n")
    jpeg = BytesIO()
    Image.new("RGB", (200, 120), "red").save(jpeg, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "bomb.png").write_bytes(png_header(10_000, 10_000))  # 1-2x Pillow's limit: a warning in Pillow
    (tmp_path / "huge.png").write_bytes(png_header(30_000, 30_000))  # > 2x: Pillow's own error
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    paths = [good[0], *bad, good[1]]
    result = classify(project, *paths, "--model", "resnet18", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    output = json.loads(result.stdout)
    assert [entry["path"] for entry in output] == [str(p) for p in paths]
    assert [len(entry.get("predictions", [])) for entry in output] == [5, 0, 0, 0, 0, 0, 0, 5]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == len(bad) + 1 and "6 of 8 inputs could not be classified" in errors[-1]
    for line, (path, problem), entry in zip(errors, bad.items(), output[1:]):
        assert line.startswith(f"ERROR: {path}: ") and problem in line, line
        assert problem in entry["error"]


def test_a_missing_model_says_how_to_get_it(partial, tmp_path):
    [png] = save_pngs(np.zeros((1, 32, 32, 3), np.uint8), tmp_path)
    result = classify(partial, png, "--model", "resnet50")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "ERROR: models/resnet50.pt not found: train it with `dvc repro train-resnet50`, or fetch the "
        "trained model with `dvc pull`"]


def test_foreign_hostile_and_outdated_model_files_are_refused(project, tmp_path):
    runtime = classifier.inference_runtime("cpu")
    state = torch.load(project.root / "models/resnet18.pt", weights_only=True)
    assert len(state["classes"]) == 100  # the train stage stores the class names
    foreign = tmp_path / "resnet18.pt"
    foreign.write_bytes(b"GIF89a not a model")
    with pytest.raises(UserError, match=r"refusing .*resnet18.pt"):
        classifier.load_classifier(foreign, runtime)
    torch.save({**state, "architecture": {"block": "vgg", "layers": [1]}}, foreign)
    with pytest.raises(UserError, match=r"refusing .*architecture .*'vgg'.*dvc repro train-resnet18"):
        classifier.load_classifier(foreign, runtime)
    torch.save({**state, "architecture": "resnet18"}, foreign)  # as older train stages wrote it
    with pytest.raises(UserError, match=r"older train stage.*dvc repro train-resnet18"):
        classifier.load_classifier(foreign, runtime)
    torch.save({key: value for key, value in state.items() if key != "classes"}, foreign)
    with pytest.raises(UserError, match=r"lacks classes.*dvc repro train-resnet18"):
        classifier.load_classifier(foreign, runtime)
    pickled = tmp_path / "resnet34.pt"  # something weights_only refuses: never unpickled
    torch.save({"state_dict": {}, "architecture": "resnet34", "hook": Path("x")}, pickled)
    with pytest.raises(UserError, match="safe loader rejects"):
        classifier.load_classifier(pickled, runtime)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (its data is missing: only the size is read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- images

def saved(image: Image.Image, tmp_path: Path, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_a_32x32_rgb_image_is_used_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name in ("x.png", "x.bmp", "x.webp"):
        options = {"lossless": True} if name.endswith("webp") else {}
        loaded = images.load_image(saved(Image.fromarray(pixels), tmp_path, name, **options))
        assert loaded.dtype == np.uint8 and loaded.shape == (32, 32, 3)
        np.testing.assert_array_equal(loaded, pixels)


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 100, (100, 100, 100)),
    ("1", 1, (255, 255, 255)),
    ("P", None, (0, 128, 255)),  # palette
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # transparent: white, not the black stored under it
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("LA", (0, 128), (128, 128, 128)),  # half-transparent black over white
    ("I;16", 0x8080, (128, 128, 128)),  # 16-bit grayscale scaled, not clipped to white
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
])
def test_any_mode_becomes_rgb(tmp_path, mode, value, expected):
    if mode == "P":
        image = Image.new("RGB", (50, 40), expected).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = Image.new(mode, (50, 40), value)
    name = "x.jpg" if mode == "CMYK" else "x.png"
    loaded = images.load_image(saved(image, tmp_path, name))
    assert loaded.shape == (32, 32, 3)
    np.testing.assert_allclose(loaded.reshape(-1, 3).mean(0), expected, atol=1.5)


def test_gif_first_frame_jpeg_and_large_images(tmp_path):
    frames = [Image.new("RGB", (64, 64), color) for color in ("red", "blue")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert images.load_image(gif)[16, 16].tolist() == [255, 0, 0]
    big = saved(Image.new("RGB", (1600, 1200), (40, 160, 90)), tmp_path, "big.jpg", quality=95)
    np.testing.assert_allclose(images.load_image(big).reshape(-1, 3).mean(0), (40, 160, 90), atol=3)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((40, 40, 3), np.uint8)
    stored[:, :20, 0] = stored[:, 20:, 2] = 255  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view": the left edge goes on top
    loaded = images.load_image(saved(Image.fromarray(stored), tmp_path, "turned.png", exif=exif))
    assert loaded[4, 16].tolist() == [255, 0, 0] and loaded[28, 16].tolist() == [0, 0, 255]
    exif[0x0112] = 1  # upright as stored
    loaded = images.load_image(saved(Image.fromarray(stored), tmp_path, "upright.png", exif=exif))
    assert loaded[16, 4].tolist() == [255, 0, 0] and loaded[16, 28].tolist() == [0, 0, 255]


def test_the_central_square_is_what_is_resized(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20, 0] = wide[:, 20:40, 1] = wide[:, 40:, 2] = 255  # red, green, blue thirds
    loaded = images.load_image(saved(Image.fromarray(wide), tmp_path, "wide.png"))
    np.testing.assert_allclose(loaded.reshape(-1, 3).mean(0), (0, 255, 0), atol=3)  # the green middle


def test_pillow_decompression_bomb_limit_is_an_error(tmp_path, monkeypatch):
    path = saved(Image.new("L", (100, 100)), tmp_path, "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # 10,000 pixels: between 1x and 2x
    with pytest.raises(images.ImageError, match=r"decompression bomb.*100x100 = 10,000 pixels.*6,000"):
        images.load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)  # over 2x: Pillow raises
    with pytest.raises(images.ImageError, match="decompression bomb"):
        images.load_image(path)

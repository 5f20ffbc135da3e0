"""Running a trained model on image files: shared by `python -m src.classify` and app.py.

A models/<name>.pt file is all inference needs: the train stage stores the architecture,
width, normalisation and class names in it. Images go through the same normalisation and
forward pass as evaluation (src.evaluate.model.build_trained, src.predict.predict_logits),
so a 32x32 test image gets the probabilities the evaluate stage computed for it.
"""
from __future__ import annotations

import os

# albumentations (imported through src.train.checkpoint) asks PyPI for a newer version on import:
# inference must not reach out, nor wait for that request to time out on a machine offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import json  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: E402
from torch import nn  # noqa: E402

from src.cli import UserError  # noqa: E402
from src.data.normalize import Normalizer  # noqa: E402
from src.evaluate.model import build_trained  # noqa: E402
from src.models.resnet import ARCHITECTURES  # noqa: E402
from src.params import MODELS, RuntimeParams  # noqa: E402
from src.predict import predict_logits  # noqa: E402
from src.runtime import Runtime, resolve  # noqa: E402
from src.train.checkpoint import load_model_file  # noqa: E402

SIZE = 32  # CIFAR's images are 32x32: every input is brought to that
# Bicubic: when shrinking, Pillow widens the filter by the scale factor, so every source pixel
# contributes (antialiased, no moire from a large photo), and it keeps edges sharper than
# bilinear or box averaging, which matters at 32x32.
RESAMPLE = Image.Resampling.BICUBIC
BATCH = 256  # images per forward pass


class ImageError(Exception):
    """An input that cannot be classified; the message says why (the caller names the file)."""


# --------------------------------------------------------------------------- model files

def model_path(name: str, root: Path = Path(".")) -> Path:
    return root / "models" / f"{name}.pt"


def how_to_get(name: str) -> str:
    return f"train it with `dvc repro train-{name}`, or fetch the trained model with `dvc pull`"


def trained_models(root: Path = Path(".")) -> list[str]:
    """The models whose file exists, in the pipeline's order."""
    return [name for name in MODELS if model_path(name, root).is_file()]


def inference_runtime(device: str = "auto") -> Runtime:
    """fp32 on any device: a few images gain nothing from bf16, which would change the
    probabilities; eager (compiling costs seconds, a forward pass milliseconds)."""
    return resolve(RuntimeParams(device=device, compile=False, precision="fp32", workers=0))


@dataclass
class Classifier:
    """A trained model ready for inference, with what its file says about it."""
    name: str
    path: Path
    model: nn.Module
    normalize: Normalizer
    classes: list[str]
    runtime: Runtime
    trained_with: dict  # the training params stored in the model file

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, classes) softmax of uint8 (N, 32, 32, 3) RGB images."""
        logits = predict_logits(self.model, images, self.normalize, self.runtime, BATCH)
        return logits.softmax(1).numpy()

    def top(self, image: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable (class, probability) of one image, best first."""
        return top_k(self.probabilities(image[None])[0], self.classes, k)


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]  # stable: ties keep class order
    return [(classes[i], float(probabilities[i])) for i in order]


def load_classifier(path: Path, runtime: Runtime) -> Classifier:
    """The model file at `path` (read with weights_only=True), checked, on the runtime's device."""
    name = path.stem
    if not path.is_file():
        raise UserError(f"{path} not found: {how_to_get(name)}")
    state = load_model_file(path)  # refuses hostile and foreign files with a clear message
    _check_model_file(state, path)
    model, normalize = build_trained(state, runtime)
    return Classifier(state["architecture"], path, model, normalize, list(state["classes"]), runtime,
                      state.get("params") or {})


def _check_model_file(state: dict, path: Path) -> None:
    architecture = state["architecture"]
    if architecture not in ARCHITECTURES:
        raise UserError(f"refusing {path}: its architecture {architecture!r} is none of "
                        f"{', '.join(sorted(ARCHITECTURES))}. Delete it and run `dvc repro`.")
    missing = [key for key in ("num_classes", "width", "normalize") if key not in state]
    if missing:
        raise UserError(f"refusing {path}: it lacks {', '.join(missing)}, so it is not a model file "
                        f"written by the train stage. Delete it and run `dvc repro train-{architecture}`.")
    classes = state.get("classes")
    if classes is None:
        raise UserError(f"{path} has no class names: an older train stage wrote it. Retrain it with "
                        f"`dvc repro train-{architecture}` (model files now carry their class names).")
    if len(classes) != state["num_classes"] or not all(isinstance(c, str) for c in classes):
        raise UserError(f"refusing {path}: it lists {len(classes)} class names for {state['num_classes']} "
                        f"outputs. Retrain it with `dvc repro train-{architecture}`.")


# --------------------------------------------------------------------------- metrics

def test_metrics(name: str, root: Path = Path(".")) -> dict | None:
    """metrics/<name>.json as the evaluate stage wrote it, or None when absent or unreadable."""
    try:
        metrics = json.loads((root / "metrics" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "top1" in metrics else None


def default_model(root: Path = Path(".")) -> tuple[str, str]:
    """(model, why): the trained model with the best test top-1, else the first trained one."""
    trained = trained_models(root)
    if not trained:
        raise UserError("no trained model in models/: train one with `dvc repro train-resnet18` (all "
                        "three: `dvc repro`), or fetch the trained models with `dvc pull`")
    try:
        summary = json.loads((root / "metrics" / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    scores = {name: summary[name]["top1"] for name in trained
              if isinstance(summary.get(name), dict) and isinstance(summary[name].get("top1"), (int, float))}
    if scores:
        best = max(scores, key=scores.get)
        return best, f"the best test top-1 in metrics/summary.json ({scores[best]:.2f}%)"
    return trained[0], ("no test metrics in metrics/summary.json (run `dvc repro evaluate`): the first "
                        "trained model found")


# --------------------------------------------------------------------------- images

def load_image(path: str | Path) -> np.ndarray:
    """Any image file Pillow reads -> uint8 (32, 32, 3) RGB as the model sees it.

    EXIF orientation is applied, then the image becomes RGB (see to_rgb) and its central
    square is resized to 32x32; a 32x32 image is used as it is. Raises ImageError.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; _check_size refuses those too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image)
                rgb = to_rgb(_upright(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a folder") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"refused as a possible decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow recognises no image format in it)") from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise ImageError(f"truncated or corrupt image ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'})") from None
    return to_model_input(rgb)


def _check_size(image: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise ImageError(f"refused as a possible decompression bomb: {image.width}x{image.height} = "
                         f"{image.width * image.height:,} pixels is over Pillow's limit of {limit:,} "
                         "(PIL.Image.MAX_IMAGE_PIXELS)")


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (decoded: a copy even without one)."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, KeyError, TypeError):  # a broken EXIF block: keep the pixels
        image.load()
        return image.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any mode: transparency over white, 16-bit grayscale scaled to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow would clip 0..65535 to 0..255 (a white image): scale the range instead.
        levels = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(levels.round(), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # As a browser shows it on a white page; plain convert("RGB") would expose the colour
        # stored under transparent pixels (often black).
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def to_model_input(image: Image.Image) -> np.ndarray:
    """RGB image -> uint8 (32, 32, 3): the central square (largest that fits) resized with RESAMPLE."""
    if image.size != (SIZE, SIZE):
        # CIFAR's images are square: cropping keeps shapes unsquashed; fit() resizes through a
        # crop box in one resampling pass.
        image = ImageOps.fit(image, (SIZE, SIZE), method=RESAMPLE)
    return np.asarray(image, dtype=np.uint8).copy()


IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

"""The web demo (Gradio): upload, paste or drop an image and see its five most likely classes.

    python app.py [--host 127.0.0.1] [--port 7860]

At the repository root, as a Gradio Space expects. It serves the models in models/ that are
trained (and says how to get the others), each model's test top-1 from metrics/, the params
it was trained with, and example images from the test split. The endpoint `/classify` takes
(image, model name) and returns the top-5 as a Label value; `/classify_all` gives every
trained model's top-5 side by side. Images go through src/images.py and src/classifier.py, as in
`python -m src.classify`, so both give the same probabilities for the same file.
"""
from __future__ import annotations

import os

# Before gradio is imported: no telemetry and no version check (nothing leaves the machine).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from src import classifier, images, model_file  # noqa: E402
from src.errors import UserError, run  # noqa: E402

ROOT = Path(__file__).resolve().parent
TOP = 5
EXAMPLES = 8  # test-split images offered as examples, each of another class
# A 32x32 image shown at its size is a speck: fill the preview, in crisp pixels.
CSS = "#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cifar-examples-") as examples:  # removed on exit
        demo = build(ROOT, Path(examples))
        try:
            demo.launch(server_name=args.host, server_port=args.port, show_error=True,
                        footer_links=["api", "gradio"], css=CSS)
        except OSError as error:  # the port is taken, or the address is not this machine's
            raise UserError(f"cannot serve on {args.host}:{args.port} ({error}). Choose another "
                            "--port, or --host 127.0.0.1.") from None


def load_models(root: Path) -> tuple[dict[str, classifier.Classifier], dict[str, str]]:
    """(loaded models, why each other model is not served)."""
    runtime = classifier.inference_runtime()
    loaded, missing = {}, {}
    for name in classifier.model_names(root):
        path = model_file.path_of(name, root)
        if not path.is_file():
            missing[name] = f"not trained: {model_file.how_to_get(name)}"
            continue
        try:
            loaded[name] = classifier.load_classifier(path, runtime)
        except UserError as error:  # a foreign or outdated file: the others still serve
            missing[name] = str(error).replace(str(path), f"models/{name}.pt")
    if not loaded:
        raise UserError("no model to serve: " + "; ".join(f"{n}: {why}" for n, why in missing.items()))
    return loaded, missing


def build(root: Path, example_dir: Path) -> gr.Blocks:
    """The demo for the models under `root`; example PNGs are written to `example_dir`."""
    models, missing = load_models(root)
    default = classifier.default_model(root)[0]
    default = default if default in models else next(iter(models))

    def classify(image: str | None, model: str) -> dict[str, float] | None:
        """The top-5 classes of the image file with one model, as a gr.Label value."""
        if image is None:
            return None
        if model not in models:
            raise gr.Error(f"{model} is not served: {missing.get(model, 'unknown model')}")
        return dict(models[model].top(_load(image), TOP))

    def classify_all(image: str | None, show: bool) -> list:
        """The side-by-side row: shown or hidden, then every served model's top-5."""
        if not show or image is None:
            return [gr.update(visible=show), *([None] * len(models))]
        pixels = _load(image)
        return [gr.update(visible=True), *(dict(c.top(pixels, TOP)) for c in models.values())]

    with gr.Blocks(title="CIFAR-100 ResNets") as demo:
        gr.Markdown("# CIFAR-100 ResNets\nUpload, paste or drop an image (or pick an example from the "
                    "test split below). It is brought to 32x32 RGB as the models were trained: EXIF "
                    "orientation applied, transparency over white, the central square resized (bicubic).")
        gr.Markdown(models_table(root, models, missing))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 label="Image", height=320, elem_id="image")
                model = gr.Dropdown(choices=list(models), value=default, label="Model", elem_id="model")
                compare = gr.Checkbox(label="All trained models side by side", elem_id="compare")
                truth = gr.Textbox(label="True class (test-split example)", interactive=False)
            with gr.Column():
                top5 = gr.Label(num_top_classes=TOP, label="Top-5", elem_id="top5")
        with gr.Row(visible=False) as side:
            labels = [gr.Label(num_top_classes=TOP, label=name, elem_id=f"top5-{name}") for name in models]
        examples = example_images(root, next(iter(models.values())).classes, example_dir)
        if examples:
            gr.Examples(examples, inputs=[image, truth], label="Test-split images (true class)",
                        examples_per_page=EXAMPLES, elem_id="examples")
        gr.on([image.change, model.change], classify, [image, model], top5, api_name="classify")
        gr.on([image.change, compare.change], classify_all, [image, compare], [side, *labels],
              api_name="classify_all")
        image.upload(lambda: "", None, truth, api_visibility="private")  # the user's own image
    return demo


def _load(path: str) -> np.ndarray:
    try:
        return images.load_image(path)
    except images.ImageError as error:
        raise gr.Error(f"{Path(path).name}: {error}") from None


def models_table(root: Path, models: dict[str, classifier.Classifier], missing: dict[str, str]) -> str:
    rows = ["| model | test top-1 (95% interval) | trained with |", "|---|---|---|"]
    for name in classifier.model_names(root):
        if name in models:
            rows.append(f"| {name} | {top1_text(classifier.test_metrics(name, root))} | "
                        f"{trained_with(models[name].trained_with)} |")
        else:
            rows.append(f"| {name} | {missing[name]} | |")
    return "\n".join(rows)


def top1_text(metrics: dict | None) -> str:
    if metrics is None:
        return "not evaluated yet: `dvc repro evaluate`"
    text = f"{metrics['top1']:.2f}%"
    low, high = metrics.get("top1_low"), metrics.get("top1_high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        text += f" ({low:.2f}-{high:.2f})"
    return text


def trained_with(params: dict) -> str:
    """The training params stored in the model file, in a line."""
    recipe, train = params.get("recipe") or {}, params.get("train") or {}
    parts = [f"{label} {params[key]:g}" for key, label in
             (("epochs", "epochs"), ("lr", "lr"), ("batch_size", "batch"), ("width", "width"), ("seed", "seed"))
             if isinstance(params.get(key), (int, float))]
    parts += [f"{key.replace('_alpha', '')} {recipe[key]:g}" for key in ("mixup_alpha", "cutmix_alpha")
              if recipe.get(key)]
    autoaugment = recipe.get("autoaugment")  # a probability (a flag in older model files)
    parts += [f"AutoAugment {autoaugment:g}" if not isinstance(autoaugment, bool) else "AutoAugment"] \
        if autoaugment else []
    parts += [f"EMA {train['ema_decay']:g}"] if train.get("ema_decay") else []
    return ", ".join(parts) or "(no params in the model file)"


def example_images(root: Path, classes: list[str], folder: Path) -> list[list[str]]:
    """[[PNG path, true class]]: the first test images of EXAMPLES different classes, in `folder`."""
    try:
        with np.load(root / "data" / "prepared" / "test.npz") as split:
            images, labels = split["images"], split["fine_labels"]
    except (OSError, ValueError, KeyError):
        return []  # no prepared data here (only the models were pulled): no examples
    examples = []
    for index in sorted(np.unique(labels, return_index=True)[1])[:EXAMPLES]:
        path = folder / f"test-{index:05d}.png"
        Image.fromarray(images[index]).save(path)
        examples.append([str(path), classes[labels[index]]])
    return examples


if __name__ == "__main__":
    run(main)

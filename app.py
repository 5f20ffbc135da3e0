"""The web demo (Gradio): upload, paste or drop an image and see its five most likely classes.

    python app.py [--host 127.0.0.1] [--port 7860] [--max-file-size MB] [--concurrency N]
                  [--queue-size N] [--max-batch-size N] [--batch-wait-ms MS]

At the repository root, as a Gradio Space expects. It serves the models in models/ that are
trained (and says how to get the others), each model's test top-1 from metrics/, the params
it was trained with, and example images from the test split. The endpoint `/classify` takes
(image, model name) and returns the top-5 as a Label value; `/classify_all` gives every
trained model's top-5 side by side. Images go through src/images.py and src/classifier.py, as in
`python -m src.classify`, so both give the same probabilities for the same file.

As a service (src/serving.py): uploads over --max-file-size are refused while they arrive; each
request decodes its own upload (a bad file gets its own message, naming it) and its forward pass
is batched with the concurrent requests'; each upload is deleted once decoded, and the run's
temporary folder (uploads, examples) when the app exits, on Ctrl-C or SIGTERM alike.
"""
from __future__ import annotations

import os

# Before gradio is imported: no telemetry and no version check (nothing leaves the machine).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Before torch is imported: OpenMP threads that wait for work sleep instead of spinning, so the
# batcher's forward passes do not fight the handler threads' decoding for the cores (on two
# shared cores the batched forward time halved in scripts/load_app.py's quick check).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _run_folder() -> str:
    """This run's temporary folder (uploads, examples), inside GRADIO_TEMP_DIR when that is set.

    Made before gradio is imported, which reads GRADIO_TEMP_DIR then; main() removes it on exit.
    """
    import tempfile
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="cifar-app-", dir=parent)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(folder, "uploads")
    return folder


RUN_FOLDER = _run_folder() if __name__ == "__main__" else None

import argparse  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from src import classifier, images, model_file  # noqa: E402
from src.errors import UserError, run  # noqa: E402
from src.serving import Batcher, Limits, Stats, Uploads  # noqa: E402

ROOT = Path(__file__).resolve().parent
TOP = 5
EXAMPLES = 8  # test-split images offered as examples, each of another class
DEFAULT_LIMITS = Limits()
# A 32x32 image shown at its size is a speck: fill the preview, in crisp pixels.
CSS = "#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def main() -> None:
    # SIGTERM (a service manager, a Space restarting) stops the server as Ctrl-C does, so this
    # run's temporary folder is removed either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve(parse_args())
    except KeyboardInterrupt:  # while it was starting (once started, Gradio itself stops on it)
        print("stopped", flush=True)
    finally:
        shutil.rmtree(RUN_FOLDER, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0 and its port; on a workstation: loopback only.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    Limits.add_arguments(parser)
    args = parser.parse_args()
    try:
        args.limits = Limits.from_args(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def serve(args: argparse.Namespace) -> None:
    examples = Path(RUN_FOLDER) / "examples"
    examples.mkdir()
    stats = Stats()
    demo = build(ROOT, examples, args.limits, stats)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=True,
                    footer_links=["api", "gradio"], css=CSS, max_file_size=args.limits.max_file_bytes)
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise UserError(f"cannot serve on {args.host}:{args.port} ({error}). Choose another "
                        "--port, or --host 127.0.0.1.") from None
    print(stats.line(), flush=True)  # where the time went, for whoever runs it as a service


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class Upload(gr.Image):
    """gr.Image that hands the handler the uploaded file untouched.

    gr.Image opens every upload with Pillow before the handler runs, so a text file, an empty or
    truncated file or a decompression bomb got Pillow's raw error with the server's temporary
    path in it; here src/images.py decodes it and the message names the user's file.
    """
    is_template = True  # the page draws it as a gr.Image

    def preprocess(self, payload):
        if payload is None or payload.path is None:  # nothing, or a data: URL (decoded by Gradio)
            return super().preprocess(payload)
        return payload.path  # <upload folder>/<hash>/<the user's file name>


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


def build(root: Path, example_dir: Path, limits: Limits = DEFAULT_LIMITS, stats: Stats | None = None) -> gr.Blocks:
    """The demo for the models under `root`; example PNGs are written to `example_dir`."""
    models, missing = load_models(root)
    default = classifier.default_model(root)[0]
    default = default if default in models else next(iter(models))
    stats = stats or Stats()
    batcher = Batcher(limits.max_batch_size, limits.batch_wait_ms, stats)

    def top(model: classifier.Classifier, pixels: np.ndarray) -> dict[str, float]:
        return dict(classifier.top_k(batcher.probabilities(model, pixels), model.classes, TOP))

    def classify(image: str | None, model: str) -> dict[str, float] | None:
        """The top-5 classes of the image file with one model, as a gr.Label value."""
        if image is None:
            return None
        if model not in models:
            raise gr.Error(f"{model} is not served: {missing.get(model, 'unknown model')}")
        stats.add(requests=1)
        with batcher.arriving():  # the batcher may wait for this image
            pixels = _load(uploads, image)
        return top(models[model], pixels)

    def classify_all(image: str | None, show: bool) -> list:
        """The side-by-side row: shown or hidden, then every served model's top-5."""
        if not show or image is None:
            return [gr.update(visible=show), *([None] * len(models))]
        stats.add(requests=1)
        with batcher.arriving():
            pixels = _load(uploads, image)
        return [gr.update(visible=True), *(top(c, pixels) for c in models.values())]

    with gr.Blocks(title="CIFAR-100 ResNets") as demo:
        uploads = Uploads(demo.upload_file_set, stats=stats)  # Gradio's record of what users uploaded
        uploads.sweep_every(60)  # seconds
        gr.Markdown("# CIFAR-100 ResNets\nUpload, paste or drop an image (or pick an example from the "
                    "test split below). It is brought to 32x32 RGB as the models were trained: EXIF "
                    "orientation applied, transparency over white, the central square resized (bicubic).")
        gr.Markdown(models_table(root, models, missing))
        with gr.Row():
            with gr.Column():
                image = Upload(type="filepath", image_mode=None, sources=["upload", "clipboard"],
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
        # Both endpoints share one pool of `concurrency` handler threads.
        gr.on([image.change, model.change], classify, [image, model], top5, api_name="classify",
              concurrency_id="classify")
        gr.on([image.change, compare.change], classify_all, [image, compare], [side, *labels],
              api_name="classify_all", concurrency_id="classify")
        image.upload(lambda: "", None, truth, api_visibility="private")  # the user's own image
    # Beyond `queue_size` waiting requests Gradio answers "queue is full" at once.
    return demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)


def _load(uploads: Uploads, path: str) -> np.ndarray:
    try:
        return uploads.pixels(path)
    except images.ImageError as error:  # the user's file name, never the server's path
        # duration=None: the message stays until closed (the result box itself only says "Error").
        raise gr.Error(f"{Path(path).name}: {error}", duration=None, print_exception=False) from None


def models_table(root: Path, models: dict[str, classifier.Classifier], missing: dict[str, str]) -> str:
    rows = ["| model | test top-1 (95% interval) | trained with |", "|---|---|---|"]
    for name in classifier.model_names(root):
        if name in models:
            rows.append(f"| {name} | {classifier.score_text(classifier.test_metrics(name, root))} | "
                        f"{classifier.trained_with_text(models[name].trained_with)} |")
        else:
            rows.append(f"| {name} | {missing[name]} | |")
    return "\n".join(rows)


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

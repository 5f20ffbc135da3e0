"""Speed and memory of the training and evaluation paths against bare PyTorch, in one run.

    python scripts/benchmark.py --device cpu --model resnet18 --width 16 --batch-size 128 --json

Not collected by pytest. Every speed is the best of `--repeats` timed calls after a warm-up,
and the project's paths take turns with a minimal PyTorch loop on the same model config;
each ratio is the median over rounds of the ratio within a round, so it holds on a noisy
machine:
  train_step_img_s         the stage's epoch loop (lr schedule, loss policy, checks) on batches
                           already in memory on the device
  bare_step_img_s          model -> cross_entropy -> backward -> SGD step, nothing else, in the
                           faster memory layout (per round, the better of bare_step_nchw_img_s
                           and bare_step_nhwc_img_s; NHWC only where it is safe, see
                           src/runtime.py), so the ratio is against the best a plain loop gets
  epoch_img_s              a whole epoch through the stage's batches (workers or on-device)
  loader_img_s_per_worker  the worker-side pipeline alone in one process (the default crop/flip/
                           cutout as one batch op, collate included)
  loader_albumentations_.. the same pipeline through albumentations image by image, for comparison
  loader_autoaugment_...   ResNet-50's pipeline (RandomResizedCrop, flip, torchvision's AutoAugment
                           on 70%, Cutout): albumentations image by image
  eval_img_s               the evaluation path (predict_logits) on uint8 images
  bare_eval_img_s          a bare forward pass under no_grad on normalised tensors
  checkpoint_save_ms       a synchronous save of the resume checkpoint (model + optimizer)
  checkpoint_blocks_ms     what the stage's background saver makes the epoch wait instead
  peak_rss_mb, peak_gpu_mb peak memory of this process (and the GPU)

    python scripts/benchmark.py --classify --device cpu --width 64 --json

With --classify it measures inference on image files instead, for each model (untrained
weights at --width: speed only), as the median of --classify-runs warm calls, in ms:
  <model>_png32_ms         `python -m src.classify`'s path for one 32x32 PNG: decode, to RGB,
                           forward, top-5 (src/images.py, src/classifier.py)
  <model>_jpeg640_ms       the same for a 640x480 JPEG photo (decode and resize to 32x32 included)
  <model>_forward_ms       the forward pass and softmax alone, on the decoded image
  <model>_app_ms           app.py's round trip: gradio_client uploads the PNG to the app on a
                           loopback port, /classify runs, the top-5 comes back
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The epoch loop's progress bars would bury the figures; tqdm reads this when first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.augment import pipelines  # noqa: E402
from src.data.normalize import Normalizer  # noqa: E402
from src.models.build import build_model  # noqa: E402
from src.params import AugmentParams, RuntimeParams, TrainParams, load_params  # noqa: E402
from src.predict import predict_logits  # noqa: E402
from src.runtime import channels_last_is_fast, resolve  # noqa: E402
from src.train import checkpoint  # noqa: E402
from src.train.data import LoaderBatches, make_batches  # noqa: E402
from src.train.loop import StepRecipe, train_epoch  # noqa: E402
from src.train.optim import build_optimizer  # noqa: E402

MEAN, STD = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]  # CIFAR-100 train split


def timed_rounds(runs: dict, repeats: int, sync) -> dict[str, list[float]]:
    """{name: (call, images per call)} -> {name: images per second of each of `repeats` timed
    calls}, after a warm-up call of each.

    The runs take turns (A, B, A, B, ...), so a slow spell of a shared machine hits both, and
    round i of A can be compared with round i of B (see paired_ratio).
    """
    rates = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, (run, images) in runs.items():
            start = time.perf_counter()
            run()
            sync()
            if round_ > 0:  # round 0 warms up (allocator, cuDNN autotuning, compilation)
                rates[name].append(images / (time.perf_counter() - start))
    return rates


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Speed of A over speed of B: the median over rounds of the ratio within a round, which a
    noisy machine moves less than the ratio of two best-of figures."""
    return statistics.median(x / y for x, y in zip(a, b))


def checkpoint_ms(model, optimizer, repeats: int) -> dict[str, float]:
    """How long an epoch waits for its resume checkpoint: a synchronous save against the
    train stage's background saver (which only copies the state to host memory)."""
    state = lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()}  # noqa: E731
    saver, sync_s, blocked_s = checkpoint.BackgroundSaver(), [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            checkpoint.save(state(), f"{folder}/sync.pt")
            sync_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            saver.submit(state(), f"{folder}/background.pt")
            blocked_s.append(time.perf_counter() - start)
            saver.wait()  # an epoch is far longer than a write
    return {"checkpoint_save_ms": 1000 * min(sync_s[1:]), "checkpoint_blocks_ms": 1000 * min(blocked_s[1:])}


def bare_steps(model, forward, resident, normalize, memory_format, runtime):
    """A plain loop over resident batches: forward, cross-entropy, backward, SGD, nothing else."""
    device = runtime.device
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=5e-4, fused=device.type == "cuda" or None)
    inputs = [(normalize(x).contiguous(memory_format=memory_format), y) for x, y in resident]

    def run():
        model.train()
        for x, y in inputs:
            with runtime.autocast():
                loss = F.cross_entropy(forward(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed call")
    parser.add_argument("--epoch-images", type=int, default=None,
                        help="images in the timed epoch (default: 50,000 on CUDA, 20 batches elsewhere)")
    parser.add_argument("--loader-images", type=int, default=None,
                        help="images per timed call of the loader pipelines (default: the epoch's)")
    parser.add_argument("--bare-layouts", default="all", choices=["all", "project"],
                        help="time the bare loop in every safe layout (all: NCHW, and NHWC where it is safe) "
                             "or only in the project's (one torch.compile less)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                        help="the project's layout (runtime.channels_last)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--classify", action="store_true",
                        help="measure the latency of classifying image files and of the app instead")
    parser.add_argument("--classify-runs", type=int, default=30, help="timed calls per figure (--classify)")
    args = parser.parse_args()
    if args.classify:
        report(classify_latency(args.device, args.width, args.classify_runs), args.json)
        return

    flag = {"auto": "auto", "true": True, "false": False}
    runtime = resolve(RuntimeParams(device=args.device, compile=flag[args.compile], precision=args.precision,
                                    channels_last=flag[args.channels_last]))
    device, batch = runtime.device, args.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def new_model():
        model = build_model(load_params().recipe(args.model).architecture(), width=args.width).to(
            device, memory_format=runtime.memory_format)
        return model, (torch.compile(model) if runtime.compile else model)

    normalize = Normalizer(MEAN, STD, device, runtime.channels_last)
    images = torch.from_numpy(rng.integers(0, 256, (args.steps * batch, 32, 32, 3), dtype=np.uint8)).to(device)
    labels = torch.from_numpy(rng.integers(0, 100, args.steps * batch)).to(device)
    resident = [(images[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch]) for i in range(args.steps)]
    recipe = StepRecipe(label_smoothing=0.1, mix=None, grad_clip_norm=None)
    prepare = lambda x, y: (normalize(x), y.to(device, non_blocking=True))  # noqa: E731 as in stages/train.py

    model, forward = new_model()
    optimizer = build_optimizer(model, TrainParams(), device)

    def project_epoch(batches, count):
        return lambda: train_epoch(forward, optimizer, batches, prepare, recipe, runtime, epoch=0,
                                   epochs=1, first_step=0, total_steps=10 * count, warmup_steps=count,
                                   peak_lr=0.1, schedule="cosine", seed=0, desc="bench")

    # The bare loop reuses the project's model object in the project's layout (own optimizer): a
    # second copy would sit elsewhere in memory, and on two CPU cores that alone moved the ratio
    # by +-10% from run to run. The other layout needs a copy; it is timed where it is safe.
    layouts = {"nchw": torch.contiguous_format}
    if channels_last_is_fast(device):
        layouts["nhwc"] = torch.channels_last
    if args.bare_layouts == "project":
        layouts = {name: fmt for name, fmt in layouts.items() if fmt == runtime.memory_format}
    bare_runs = {}
    for layout, fmt in layouts.items():
        if fmt == runtime.memory_format:
            bare_model, bare_forward = model, forward
        else:
            bare_model = copy.deepcopy(model).to(memory_format=fmt)
            bare_forward = torch.compile(bare_model) if runtime.compile else bare_model
        bare_runs[f"bare_step_{layout}_img_s"] = (bare_steps(bare_model, bare_forward, resident, normalize, fmt,
                                                              runtime), args.steps * batch)
    # The project's layout is the one the bare eval (and the checkpoint figures) use.
    bare_model = model

    pipeline = pipelines.split_normalize(pipelines.build_train(AugmentParams(), MEAN, STD))[0]
    epoch_images = args.epoch_images or (50_000 if device.type == "cuda" else 20 * batch)
    train_images = rng.integers(0, 256, (epoch_images, 32, 32, 3), dtype=np.uint8)
    train_labels = rng.integers(0, 100, epoch_images)
    batches = make_batches(train_images, train_labels, pipeline, batch, 0, runtime)
    step_images = args.steps * batch
    rounds = timed_rounds({"train_step_img_s": (project_epoch(resident, args.steps), step_images),
                           **bare_runs,
                           "epoch_img_s": (project_epoch(batches, len(batches)), len(batches) * batch)},
                          args.repeats, sync)
    rounds["bare_step_img_s"] = [max(rates) for rates in zip(*(rounds[key] for key in bare_runs))]

    # Per worker process: the default pipeline (the batch op), the same through albumentations
    # image by image, and ResNet-50's (its reference's: RandomResizedCrop, flip, AutoAugment on 70%,
    # Cutout), which always runs in workers (runtime.workers of them must outpace the GPU).
    defaults = load_params(Path(__file__).resolve().parents[1] / "params.yaml")  # the models are its blocks
    autoaugment = pipelines.split_normalize(pipelines.build_train(
        defaults.model_augment("resnet50"), MEAN, STD, defaults.recipe("resnet50").autoaugment))[0]
    loader_images = min(args.loader_images or epoch_images, epoch_images)
    loaders = {key: LoaderBatches(train_images[:loader_images], train_labels[:loader_images], p, batch, 0,
                                  workers=0, pin_memory=False)
               for key, p in (("loader_img_s_per_worker", pipeline),
                              ("loader_albumentations_img_s_per_worker", pipeline),
                              ("loader_autoaugment_img_s_per_worker", autoaugment))}
    loaders["loader_albumentations_img_s_per_worker"].loader.dataset.batch_op = None
    rounds |= timed_rounds({key: (lambda loader=loader: [b for b in loader], len(loader) * batch)
                            for key, loader in loaders.items()}, args.repeats, lambda: None)

    eval_images = train_images[:args.steps * batch]

    normalised = [(normalize(x), y) for x, y in resident]

    @torch.no_grad()
    def bare_eval():
        bare_model.eval()
        for x, _ in normalised:
            with runtime.autocast():
                bare_model(x)

    # Both eager: the stages evaluate without torch.compile (see stages/evaluate.py).
    rounds |= timed_rounds({"eval_img_s": (lambda: predict_logits(model, eval_images, normalize, runtime, batch),
                                           step_images),
                            "bare_eval_img_s": (bare_eval, step_images)}, args.repeats, sync)
    figures = {name: max(rates) for name, rates in rounds.items()}
    figures |= checkpoint_ms(model, optimizer, args.repeats)
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    figures = {k: round(v, 1) for k, v in figures.items()}
    ratio = lambda a, b: round(paired_ratio(rounds[a], rounds[b]), 3)  # noqa: E731
    figures["ratios"] = {
        "train_step/bare_step": ratio("train_step_img_s", "bare_step_img_s"),
        "epoch/train_step": ratio("epoch_img_s", "train_step_img_s"),
        "eval/bare_eval": ratio("eval_img_s", "bare_eval_img_s"),
        "loader/albumentations": ratio("loader_img_s_per_worker", "loader_albumentations_img_s_per_worker"),
    }
    figures["ratios"]["bare_nhwc/bare_nchw"] = (ratio("bare_step_nhwc_img_s", "bare_step_nchw_img_s")
                                                if len(layouts) == 2 else None)
    figures["config"] = {"device": runtime.describe(), "model": args.model, "width": args.width,
                         "batch_size": batch, "steps": args.steps, "repeats": args.repeats,
                         "epoch_images": len(batches) * batch, "loader_images": loader_images,
                         "bare_layouts": sorted(layouts), "torch": str(torch.__version__)}
    report(figures, args.json)


def report(figures: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>40}: {value}")


def median_ms(call, runs: int) -> float:
    """Median wall time of `runs` calls after one untimed warm-up call, in ms."""
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def classify_latency(device: str, width: int, runs: int) -> dict:
    """The --classify figures (see the docstring); imports the app's stack only when asked."""
    import gradio
    from gradio_client import Client, handle_file
    from PIL import Image

    import app
    from src import classifier, images, model_file
    from src.params import load_params
    MODELS = load_params().model.names  # noqa: N806

    rng = np.random.default_rng(0)
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        png, jpeg = root / "image.png", root / "photo.jpg"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png)
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(jpeg, quality=90)
        runtime = classifier.inference_runtime(device)
        for name in MODELS:
            path = model_file.path_of(name, root)
            path.parent.mkdir(exist_ok=True)
            architecture = load_params().recipe(name).architecture()
            model_file.write(path, name=name, architecture=architecture, width=width,
                             state_dict=build_model(architecture, width=width).state_dict(), ema=False,
                             params={"width": width}, prepared_data_hash="", normalize={"mean": MEAN, "std": STD},
                             classes=[f"class {i}" for i in range(100)], history=[], versions={})
            model = classifier.load_classifier(path, runtime)
            pixels = images.load_image(png)
            for key, image in (("png32", png), ("jpeg640", jpeg)):
                figures[f"{name}_{key}_ms"] = median_ms(
                    lambda model=model, image=image: model.top(images.load_image(image), 5), runs)
            figures[f"{name}_forward_ms"] = median_ms(
                lambda model=model, pixels=pixels: model.probabilities(pixels[None]), runs)
        # The app in this process, on a loopback port; its models are the files just written.
        demo = app.build(root, root)
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
        try:
            client = Client(url, verbose=False)
            for name in MODELS:
                figures[f"{name}_app_ms"] = median_ms(
                    lambda name=name: client.predict(handle_file(str(png)), name, api_name="/classify"), runs)
        finally:
            demo.close()
    figures["config"] = {"device": runtime.describe(), "width": width, "runs": runs,
                         "torch": str(torch.__version__), "gradio": gradio.__version__,
                         "threads": torch.get_num_threads()}
    return figures


if __name__ == "__main__":
    main()

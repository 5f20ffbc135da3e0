"""ImageNet weights of a zoo architecture: fetched once into weights/<model>.pt (stage
`weights-<model>`), then loaded under a new 100-class head by the train stage.

Fetching goes through the zoo itself, so its cache, checksums and key conversions apply:
torchvision's weights enum (the architecture's DEFAULT weights, from torch.hub's cache,
$TORCH_HOME/hub/checkpoints, else downloaded and checked against the hash in the file name) and
timm's pretrained config (the Hugging Face Hub cache, $HF_HOME/hub, else downloaded). The file
written holds the 1000-class state dict as the zoo's model has it, and where it came from. DVC
hashes it (dvc.lock), and the model file and the metrics' provenance record that hash, so other
weights never hide behind the same params.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from src.atomic import staged_file
from src.provenance import file_md5

IMAGENET_CLASSES = 1000


def path_of(model_name: str, root: str | Path = ".") -> Path:
    return Path(root) / "weights" / f"{model_name}.pt"


def fetch(zoo: str, name: str, options: dict, destination: Path) -> dict:
    """Write the zoo's ImageNet weights for `name` (built with `options`) to `destination`;
    returns where they came from. A ValueError saying where to put the file when they cannot be had."""
    try:
        if zoo == "torchvision":
            model, source = _torchvision(name, options)
        else:
            model, source = _timm(name, options)
    except Exception as error:  # noqa: BLE001 (no network, no cached file, a bad file: each zoo raises its own)
        raise ValueError(f"cannot get the ImageNet weights of {zoo}'s {name}: {_first_line(error)}. "
                         f"{_where_to_put(zoo, name)}") from None
    with staged_file(destination) as tmp:
        torch.save({"state_dict": model.state_dict(), "source": source}, tmp)
    return source


def _torchvision(name: str, options: dict) -> tuple[nn.Module, dict]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=weights, **options)
    return model, {"zoo": "torchvision", "name": name, "weights": str(weights), "url": weights.url}


def _timm(name: str, options: dict) -> tuple[nn.Module, dict]:
    import timm
    from huggingface_hub import try_to_load_from_cache

    # The Hugging Face cache first: offline, hf_hub_download would retry the network for a minute.
    cfg = timm.models.get_pretrained_cfg(name)
    overlay = None
    for filename in ("model.safetensors", "pytorch_model.bin") if cfg and cfg.hf_hub_id else ():
        if isinstance(cached := try_to_load_from_cache(cfg.hf_hub_id, filename), str):
            overlay = {"file": cached}
            break
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **options)
    cfg = model.pretrained_cfg
    where = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    return model, {"zoo": "timm", "name": name, "weights": f"{cfg.get('architecture')}.{cfg.get('tag')}",
                   "url": where}


def _where_to_put(zoo: str, name: str) -> str:
    if zoo == "torchvision":
        import torchvision

        url = torchvision.models.get_model_weights(name).DEFAULT.url
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return (f"Without internet, download {url} elsewhere and copy it to {folder / url.rsplit('/', 1)[1]} "
                "(torch.hub's cache; $TORCH_HOME moves it), then run `dvc repro` again")
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    if hub_id:
        return (f"Without internet, run `hf download {hub_id}` on a machine with internet and copy "
                f"its cache folder {cache / ('models--' + hub_id.replace('/', '--'))} to the same place here "
                "(the Hugging Face cache; $HF_HOME moves it), then run `dvc repro` again")
    return f"timm has no ImageNet weights for {name}: see `timm.list_models(pretrained=True)`"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def load_into(model: nn.Module, path: Path) -> tuple[set[str], dict]:
    """Load the ImageNet weights file at `path` into `model`, every tensor but the 1000-class
    classifier's. Returns the names of the parameters left as built (the new head), and what the
    model file and the metrics' provenance record of the file: its path, md5 and source.

    A ValueError when the file does not fit: made for other options or another architecture."""
    try:
        file = torch.load(path, map_location="cpu", weights_only=True)
        weights = file["state_dict"]
    except Exception as error:
        raise ValueError(f"{path} is not a weights file written by the weights stage "
                         f"({_first_line(error)}): delete it and run `dvc repro` again") from None
    own = model.state_dict()
    loaded = {key: value for key, value in weights.items() if key in own and own[key].shape == value.shape}
    misfits = sorted(key for key in weights if key not in loaded and not _is_classifier(weights[key]))
    missing_body = sorted(key for key in own if key not in loaded and key not in weights
                          and not key.endswith("num_batches_tracked"))
    if misfits or missing_body:
        example = misfits[0] if misfits else missing_body[0]
        detail = (f"file {tuple(weights[example].shape)}, model {tuple(own[example].shape)}"
                  if misfits and example in own else "not in both")
        raise ValueError(f"{path} does not fit the model: {len(misfits) + len(missing_body)} tensors differ, "
                         f"e.g. {example} ({detail}). Were the weights made with other options? Delete the "
                         "file and run `dvc repro` again to fetch them for this block")
    model.load_state_dict(loaded, strict=False)
    head = {name for name, _ in model.named_parameters() if name not in loaded}
    return head, {"file": path.as_posix(), "md5": file_md5(path), **file.get("source", {})}


def _is_classifier(tensor: torch.Tensor) -> bool:
    return tensor.ndim >= 1 and tensor.shape[0] == IMAGENET_CLASSES


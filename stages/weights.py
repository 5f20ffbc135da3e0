"""Stages `weights-<name>`: the ImageNet weights a `pretrained: imagenet` model starts from.

    python -m stages.weights --model mobilenet_v2_imagenet   (run by `dvc repro weights-<name>`)

In:  params model.<name>.zoo, .name, .options, .pretrained
Out: weights/<name>.pt   the zoo's 1000-class state dict and where it came from
     (src/models/pretrained.py), from the zoo's cache or its download; the train stage of
     the model depends on it, so other weights retrain the model.
"""
import argparse

from src.errors import UserError, run
from src.models import pretrained
from src.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model.<name> block of params.yaml")
    name = parser.parse_args().model
    recipe = load_params().recipe(name)
    if recipe.pretrained is None:
        raise UserError(f"model.{name} has no `pretrained: imagenet`: it trains from scratch, so its weights "
                        f"stage has nothing to fetch. Remove stage weights-{name} from dvc.yaml, or add "
                        f"`pretrained: imagenet` to the block")
    try:
        source = pretrained.fetch(recipe.zoo, recipe.name, recipe.options, pretrained.path_of(name))
    except ValueError as error:
        raise UserError(str(error)) from None
    print(f"{name}: wrote {pretrained.path_of(name)} ({source['weights']}, from {source['url']})")


if __name__ == "__main__":
    run(main)

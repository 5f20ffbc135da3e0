"""AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) expressed in albumentations.

Each of the 25 sub-policies is two operations with their own probability; one
sub-policy is drawn per image. Magnitudes follow torchvision's AutoAugment bins
(0..9). Signed operations (shear, translate, rotate, colour factors) draw the
sign and size uniformly up to the policy's magnitude, which keeps each op a
single serialisable albumentations transform.
"""
import math

import albumentations as A

POLICY = (  # ((op, p, magnitude 0..9), (op, p, magnitude 0..9))
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
)


def _operation(name: str, p: float, magnitude: int) -> A.BasicTransform:
    level = magnitude / 9  # torchvision's 10 bins, as a fraction of the largest
    shear_deg = math.degrees(math.atan(0.3 * level))
    translate = 150 / 331 * level  # fraction of the image side
    factor = 0.9 * level  # enhancement factor range: 1 +- factor
    ops = {
        "ShearX": lambda: A.Affine(shear={"x": (-shear_deg, shear_deg), "y": (0, 0)}, p=p),
        "ShearY": lambda: A.Affine(shear={"x": (0, 0), "y": (-shear_deg, shear_deg)}, p=p),
        "TranslateX": lambda: A.Affine(translate_percent={"x": (-translate, translate), "y": (0, 0)}, p=p),
        "TranslateY": lambda: A.Affine(translate_percent={"x": (0, 0), "y": (-translate, translate)}, p=p),
        "Rotate": lambda: A.Affine(rotate=(-30 * level, 30 * level), p=p),
        "Brightness": lambda: A.ColorJitter(brightness=(1 - factor, 1 + factor), contrast=0, saturation=0, hue=0, p=p),
        "Contrast": lambda: A.ColorJitter(brightness=0, contrast=(1 - factor, 1 + factor), saturation=0, hue=0, p=p),
        "Color": lambda: A.ColorJitter(brightness=0, contrast=0, saturation=(1 - factor, 1 + factor), hue=0, p=p),
        "Sharpness": lambda: A.Sharpen(alpha=(0, factor), lightness=(1, 1), p=p),
        "Posterize": lambda: A.Posterize(num_bits=int(8 - round(magnitude / 2.25)), p=p),
        "Solarize": lambda: A.Solarize(threshold_range=(1 - level, 1 - level), p=p),
        "AutoContrast": lambda: A.AutoContrast(p=p),
        "Equalize": lambda: A.Equalize(p=p),
        "Invert": lambda: A.InvertImg(p=p),
    }
    return ops[name]()


def cifar10_policy() -> A.OneOf:
    """One sub-policy per image, each applying its two operations with their own probability."""
    return A.OneOf([A.Sequential([_operation(*a), _operation(*b)], p=1.0) for a, b in POLICY], p=1.0)

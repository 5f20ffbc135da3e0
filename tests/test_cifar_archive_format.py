"""The generated archives really have the official CIFAR-100 python format.

If tests/cifar_archive.py drifted from the real files, every download test would
be testing the wrong thing; these checks pin it down, against the genuine files
when they are available.
"""
from __future__ import annotations

import pickle
import pickletools
import tarfile
import warnings

import numpy as np
import pytest

from helpers import archive as ca
from helpers.archive import assert_equal_arrays


def _load(payload: bytes, encoding: str):
    with warnings.catch_warnings():  # numpy 2 warns about the numpy.core path the files name
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.loads(payload, encoding=encoding)


@pytest.fixture(scope="module")
def small():
    return ca.make_cifar_images(300, 200, seed=3)


def test_bytes_keys_under_bytes_encoding_and_str_under_latin1(small):
    payload = ca.py2_pickle(small["train"])
    as_bytes, as_text = _load(payload, "bytes"), _load(payload, "latin1")
    assert list(as_bytes) == [b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"]
    assert list(as_text) == ["filenames", "batch_label", "fine_labels", "coarse_labels", "data"]
    assert as_bytes[b"batch_label"] == b"training batch 1 of 1"
    assert as_text["filenames"][0] == "synthetic_train_00000.png"
    for entry in (as_bytes[b"data"], as_text["data"]):
        assert type(entry) is np.ndarray and entry.dtype == np.uint8 and entry.shape == (300, 3072)
        assert_equal_arrays(entry, small["train"]["data"])
    assert as_text["fine_labels"] == small["train"]["fine_labels"]
    assert all(type(v) is int for v in as_text["coarse_labels"])
    meta = _load(ca.py2_pickle(small["meta"]), "bytes")
    assert meta[b"fine_label_names"][:2] == [b"class_00", b"class_01"]
    assert len(meta[b"coarse_label_names"]) == 20


def test_opcodes_have_the_python2_shape(small):
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(ca.py2_pickle(small["test"]))]
    names = [name for name, _ in ops]
    assert ops[:5] == [("PROTO", 2), ("EMPTY_DICT", None), ("BINPUT", 1), ("MARK", None),
                       ("SHORT_BINSTRING", "filenames")]
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    assert ("GLOBAL", "numpy ndarray") in ops and ("GLOBAL", "numpy dtype") in ops
    assert ("SHORT_BINSTRING", "u1") in ops and ("SHORT_BINSTRING", "|") in ops
    start = names.index("GLOBAL")
    assert names[start:start + 12] == ["GLOBAL", "BINPUT", "GLOBAL", "BINPUT", "BININT1", "TUPLE1",
                                       "SHORT_BINSTRING", "TUPLE3", "REDUCE", "BINPUT", "MARK",
                                       "BININT1"]
    binstrings = [arg for name, arg in ops if name == "BINSTRING"]
    assert [len(b) for b in binstrings] == [200 * 3072]
    assert names[-4:] == ["TUPLE", "BUILD", "SETITEMS", "STOP"]
    assert "NEWFALSE" in names and not {"FRAME", "SHORT_BINUNICODE", "BINUNICODE"} & set(names)


def test_images_carry_the_labels(small):
    """Per-class colour + noise: the class is recoverable from an image's mean colour."""
    arrays = ca.expected_arrays(small["train"])
    assert_equal_arrays(arrays["coarse_labels"], arrays["fine_labels"] // 5)
    assert_equal_arrays(np.bincount(arrays["fine_labels"]), np.full(100, 3))
    means = arrays["images"].reshape(300, -1, 3).mean(1)
    nearest = np.abs(means[:, None, :] - ca.class_colours()[None]).sum(-1).argmin(1)
    assert (nearest == arrays["fine_labels"]).mean() > 0.95
    assert len({image.tobytes() for image in arrays["images"]}) == 300  # all distinct


def test_archive_layout_and_reproducibility(small, tmp_path):
    md5 = ca.write_archive(tmp_path / "a.tar.gz", **small)
    assert ca.write_archive(tmp_path / "b.tar.gz", **small) == md5
    assert ca.md5sum(tmp_path / "a.tar.gz") == md5
    with tarfile.open(tmp_path / "a.tar.gz", "r:gz") as tar:
        assert tar.getnames() == ["cifar-100-python", "cifar-100-python/meta",
                                  "cifar-100-python/test", "cifar-100-python/train"]
        test = _load(tar.extractfile("cifar-100-python/test").read(), "latin1")
    assert_equal_arrays(test["data"], small["test"]["data"])


def test_hostile_pickle_is_live(tmp_path):
    """Positive control: an unrestricted unpickler runs the payload the download tests use."""
    sentinel = tmp_path / "ran"
    payload = ca.hostile_pickle("os", "system", f"touch {sentinel}")
    _load(payload, "bytes")
    assert sentinel.exists()


def test_opcodes_match_the_genuine_test_member(genuine_archive):
    """Opcode for opcode (memo numbers included) the generated test member is the genuine one,
    up to the values of file names, labels and pixels."""
    with tarfile.open(genuine_archive, "r:gz") as tar:
        genuine = tar.extractfile("cifar-100-python/test").read()
        genuine_meta = tar.extractfile("cifar-100-python/meta").read()
    generated = ca.py2_pickle(ca.make_cifar_images(0, 10_000, seed=0)["test"])

    def skeleton(payload):
        out = []
        for op, arg, _ in pickletools.genops(payload):
            if op.name in ("SHORT_BINSTRING", "BINSTRING", "BININT1") and not (
                    isinstance(arg, str) and arg in {"filenames", "batch_label", "fine_labels",
                                                     "coarse_labels", "data", "u1", "|", "b"}):
                arg = None  # a value: file name, label, pixels
            out.append((op.name, arg))
        return out

    assert skeleton(generated) == skeleton(genuine)
    assert skeleton(ca.py2_pickle(ca.make_meta())) == skeleton(genuine_meta)

"""Archives in the official CIFAR-100 python format, built for the tests.

The official `cifar-100-python.tar.gz` is a gzip tarball of three Python 2 pickles
(protocol 2) written by cPickle. This module emits the same opcodes itself, so
that what the tests feed the pipeline has exactly the shape of the real thing:

    PROTO 2, EMPTY_DICT, MARK, SHORT_BINSTRING keys, lists of BININT1 labels and
    SHORT_BINSTRING names (MARK ... APPENDS in batches of 1000), and the `data`
    array as GLOBAL 'numpy.core.multiarray _reconstruct' / GLOBAL 'numpy ndarray' /
    (0,) / 'b' / REDUCE, then the BUILD state (1, (N, 3072), dtype('u1') built from
    GLOBAL 'numpy dtype' with state (3, '|', None, None, None, -1, -1, 0),
    NEWFALSE, BINSTRING of the raw bytes).

So `pickle.load(f, encoding="bytes")` gives byte-string keys, as the download
stage reads it, and `pickle.load(f, encoding="latin1")` gives str keys, as
torchvision reads it.

The images are cheap to make at full size (50,000 + 10,000) and learnable: each
class has its own mean colour, and each image adds its own random 8x8 noise tile
repeated over the 32x32 image (which also keeps gzip fast). Coarse labels are
fine // 5.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import struct
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_SIZE, TEST_SIZE = 50_000, 10_000  # what the download stage requires
NUM_FINE, NUM_COARSE = 100, 20
MEMBERS = {"train": "cifar-100-python/train", "test": "cifar-100-python/test",
           "meta": "cifar-100-python/meta"}
FINE_NAMES = [f"class_{i:02d}" for i in range(NUM_FINE)]
COARSE_NAMES = [f"superclass_{i:02d}" for i in range(NUM_COARSE)]
NOISE = 24  # +- amplitude of the per-image noise tile, in pixel levels
TILE = 8    # side of the noise tile repeated over the image
MTIME = 1230768000  # 2009-01-01, as in the official tarball; fixed so archives are reproducible
BATCHSIZE = 1000  # cPickle's batch size for APPENDS / SETITEMS


# --------------------------------------------------------------------------- pickles

@dataclass(frozen=True)
class Global:
    """A GLOBAL opcode: `module name`, e.g. Global("os", "system")."""
    module: str
    name: str


@dataclass(frozen=True)
class Reduce:
    """`callable(*args)` as GLOBAL/REDUCE: what a hostile pickle uses to run code."""
    func: Global
    args: tuple


class PickleWriter:
    """Emits protocol-2 opcodes the way Python 2's cPickle wrote the CIFAR files.

    Memoizes (BINPUT/LONG_BINPUT, numbered from 1) what cPickle memoized there:
    containers, dict keys and values, list items, the array's globals and
    reduced objects; not the temporaries inside the array's state.
    """

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = [pickle.PROTO + b"\x02"]
        self.memo = 0

    def getvalue(self) -> bytes:
        return b"".join([*self.parts, pickle.STOP])

    def op(self, code: bytes, arg: bytes = b"") -> None:
        self.parts.append(code + arg if arg else code)

    def put(self) -> None:
        self.memo += 1
        if self.memo < 256:
            self.op(pickle.BINPUT, bytes([self.memo]))
        else:
            self.op(pickle.LONG_BINPUT, struct.pack("<I", self.memo))

    def emit(self, value: Any, memoize: bool = True) -> None:
        if value is None:
            self.op(pickle.NONE)
        elif isinstance(value, (bool, np.bool_)):
            self.op(pickle.NEWTRUE if value else pickle.NEWFALSE)
        elif isinstance(value, (int, np.integer)):
            self.int(int(value))
        elif isinstance(value, str):  # a Python 2 str is bytes
            self.string(value.encode("latin1"), memoize)
        elif isinstance(value, (bytes, bytearray)):
            self.string(bytes(value), memoize)
        elif isinstance(value, list):
            self.list(value)
        elif isinstance(value, tuple):
            self.tuple(value)
        elif isinstance(value, dict):
            self.dict(value)
        elif isinstance(value, np.ndarray):
            self.ndarray(value)
        elif isinstance(value, Global):
            self.glob(value)
        elif isinstance(value, Reduce):
            self.glob(value.func)
            self.tuple(value.args)
            self.op(pickle.REDUCE)
        else:
            raise TypeError(f"cannot emit {type(value).__name__}")

    def int(self, value: int) -> None:
        if 0 <= value < 256:
            self.op(pickle.BININT1, bytes([value]))
        elif 0 <= value < 65536:
            self.op(pickle.BININT2, struct.pack("<H", value))
        elif -2**31 <= value < 2**31:
            self.op(pickle.BININT, struct.pack("<i", value))
        else:
            raise ValueError(f"{value} does not fit BININT")

    def string(self, value: bytes, memoize: bool = True) -> None:
        if len(value) < 256:
            self.op(pickle.SHORT_BINSTRING, bytes([len(value)]) + value)
        else:
            self.op(pickle.BINSTRING, struct.pack("<i", len(value)) + value)
        if memoize:
            self.put()

    def raw_binstring(self, data: memoryview) -> None:
        """BINSTRING without copying a large buffer first."""
        self.op(pickle.BINSTRING, struct.pack("<i", len(data)))
        self.parts.append(data)

    def list(self, items: list) -> None:
        self.op(pickle.EMPTY_LIST)
        self.put()
        for start in range(0, len(items), BATCHSIZE):
            batch = items[start:start + BATCHSIZE]
            if len(batch) > 1:
                self.op(pickle.MARK)
            for item in batch:
                self.emit(item)
            self.op(pickle.APPENDS if len(batch) > 1 else pickle.APPEND)

    def tuple(self, items: tuple) -> None:
        codes = {0: pickle.EMPTY_TUPLE, 1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}
        if len(items) > 3:
            self.op(pickle.MARK)
        for item in items:
            self.emit(item, memoize=False)
        self.op(codes.get(len(items), pickle.TUPLE))

    def dict(self, mapping: dict) -> None:
        self.op(pickle.EMPTY_DICT)
        self.put()
        items = list(mapping.items())
        for start in range(0, len(items), BATCHSIZE):
            batch = items[start:start + BATCHSIZE]
            if len(batch) > 1:
                self.op(pickle.MARK)
            for key, value in batch:
                self.emit(key)
                self.emit(value)
            self.op(pickle.SETITEMS if len(batch) > 1 else pickle.SETITEM)

    def glob(self, ref: Global) -> None:
        self.op(pickle.GLOBAL, f"{ref.module}\n{ref.name}\n".encode("ascii"))
        self.put()

    def ndarray(self, array: np.ndarray) -> None:
        """numpy's __reduce__ of an ndarray, as numpy 1.x under Python 2 pickled it."""
        array = np.ascontiguousarray(array)
        self.glob(Global("numpy.core.multiarray", "_reconstruct"))
        self.glob(Global("numpy", "ndarray"))
        self.tuple((0,))
        self.string(b"b", memoize=False)
        self.op(pickle.TUPLE3)
        self.op(pickle.REDUCE)
        self.put()
        self.op(pickle.MARK)
        self.int(1)
        self.tuple(tuple(array.shape))
        self.dtype(array.dtype)
        self.op(pickle.NEWFALSE)  # not Fortran order
        self.raw_binstring(memoryview(array).cast("B"))
        self.op(pickle.TUPLE)
        self.op(pickle.BUILD)

    def dtype(self, dtype: np.dtype) -> None:
        _, (name, align, copy), state = dtype.__reduce__()
        self.glob(Global("numpy", "dtype"))
        self.string(name.encode("ascii"), memoize=False)
        self.int(int(align))
        self.int(int(copy))
        self.op(pickle.TUPLE3)
        self.op(pickle.REDUCE)
        self.put()
        self.op(pickle.MARK)
        for item in state:
            self.emit(item, memoize=False)
        self.op(pickle.TUPLE)
        self.op(pickle.BUILD)


def py2_pickle(value: Any) -> bytes:
    """`value` pickled as Python 2's cPickle.dump(value, f, 2) wrote the CIFAR files."""
    writer = PickleWriter()
    writer.emit(value)
    return writer.getvalue()


def hostile_pickle(module: str, name: str, *args: Any) -> bytes:
    """A CIFAR-looking dict whose 'data' is `module.name(*args)`, e.g. ("os", "system", "touch x")."""
    return py2_pickle({"batch_label": "training batch 1 of 1", "data": Reduce(Global(module, name), args)})


# --------------------------------------------------------------------------- images

def class_colours() -> np.ndarray:
    """(100, 3) int16: a distinct mean colour per fine class (5 x 5 x 4 grid of levels)."""
    fine = np.arange(NUM_FINE)
    red = np.array([32, 80, 128, 176, 224])[fine // 20]
    green = np.array([32, 80, 128, 176, 224])[(fine // 4) % 5]
    blue = np.array([40, 104, 168, 232])[fine % 4]
    return np.stack([red, green, blue], axis=1).astype(np.int16)


def _data(fine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 rows in CIFAR layout: 1024 red, then green, then blue, row-major."""
    n = len(fine)
    colour = class_colours()[fine][:, :, None, None, None, None]  # (N, 3, 1, 1, 1, 1)
    tile = rng.integers(-NOISE, NOISE + 1, size=(n, 3, 1, TILE, 1, TILE), dtype=np.int16)
    reps = 32 // TILE
    planes = np.broadcast_to(colour + tile, (n, 3, reps, TILE, reps, TILE))
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(n, 3072)


def make_split(n: int, split: str, rng: np.random.Generator) -> dict:
    """A train or test entry as in the official pickles, keys in the official order."""
    fine = rng.permutation(np.arange(n) % NUM_FINE)  # balanced classes, shuffled
    data = _data(fine, rng)
    label = "training batch 1 of 1" if split == "train" else "testing batch 1 of 1"
    return {
        "filenames": [f"synthetic_{split}_{i:05d}.png" for i in range(n)],
        "batch_label": label,
        "fine_labels": fine.tolist(),
        "coarse_labels": (fine // 5).tolist(),
        "data": data,
    }


def make_meta() -> dict:
    return {"fine_label_names": list(FINE_NAMES), "coarse_label_names": list(COARSE_NAMES)}


def make_cifar_images(n_train: int = TRAIN_SIZE, n_test: int = TEST_SIZE, seed: int = 0) -> dict:
    """{'train': entry, 'test': entry, 'meta': entry}, entries as in the official pickles.

    Images correlate with labels (per-class colour + noise), so a small network
    learns them far above chance; coarse label = fine label // 5.
    """
    rng = np.random.default_rng(seed)
    return {"train": make_split(n_train, "train", rng), "test": make_split(n_test, "test", rng),
            "meta": make_meta()}


def expected_arrays(entry: dict) -> dict[str, np.ndarray]:
    """What a correct reader returns for an entry: (N, 32, 32, 3) RGB images and int labels."""
    data = entry["data"]
    return {"images": data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1),
            "fine_labels": np.asarray(entry["fine_labels"], np.int64),
            "coarse_labels": np.asarray(entry["coarse_labels"], np.int64)}


# --------------------------------------------------------------------------- tarballs

def file_member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), MTIME, 0o644
    return info, payload


def link_member(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname, info.mtime = target, MTIME
    return info, None


def fifo_member(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mtime = tarfile.FIFOTYPE, MTIME
    return info, None


HOSTILE = {
    # kind: (members added before the real ones, real members they replace)
    "traversal": lambda: ([file_member("../evil", b"written outside the target folder\n")], ()),
    "nested_traversal": lambda: ([file_member("cifar-100-python/../../evil", b"x\n")], ()),
    "absolute": lambda: ([file_member("/tmp/cifar-test-evil", b"written to an absolute path\n")], ()),
    # A symlink in place of a real member: reading it would read /etc/passwd.
    "symlink": lambda: ([link_member(MEMBERS["train"], "/etc/passwd")], ("train",)),
    "hardlink": lambda: ([link_member(MEMBERS["train"], "/etc/passwd", hard=True)], ("train",)),
    "fifo": lambda: ([fifo_member("cifar-100-python/fifo")], ()),
}


def write_archive(path: str | Path, *, train: dict | bytes | None = None,
                  test: dict | bytes | None = None, meta: dict | bytes | None = None,
                  extra_members: Iterable[tuple[tarfile.TarInfo, bytes | None]] = (),
                  drop_members: Iterable[str] = (), hostile: str | None = None,
                  compresslevel: int = 1) -> str:
    """Write a cifar-100-python.tar.gz at `path`; return its md5.

    train/test/meta: an entry dict (pickled as Python 2 did), raw bytes (used as
    the member's content as is, e.g. hostile_pickle(...)), or None for a default:
    the standard meta, and for train/test a small 100-image split (a valid format
    but not the size the download stage requires; enough for archives that must
    fail before decoding). drop_members: 'train', 'test' and/or 'meta' to leave
    out. extra_members: (TarInfo, payload or None) added before the real members.
    hostile: one of HOSTILE's kinds. The bytes are reproducible for equal inputs.
    """
    given = {"train": train, "test": test, "meta": meta}
    defaults = None
    extra = list(extra_members)
    dropped = set(drop_members)
    if hostile is not None:
        added, replaced = HOSTILE[hostile]()
        extra = [*added, *extra]
        dropped |= set(replaced)
    members = [(_dir_member("cifar-100-python"), None), *extra]
    for key in ("meta", "test", "train"):  # the official order
        if key in dropped:
            continue
        value = given[key]
        if value is None:
            defaults = defaults or make_cifar_images(100, 100, seed=1)
            value = defaults[key]
        payload = value if isinstance(value, (bytes, bytearray)) else py2_pickle(value)
        members.append(file_member(MEMBERS[key], bytes(payload)))
    path = Path(path)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               compresslevel=compresslevel, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return md5sum(path)


def _dir_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    return info


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the suite's archives

ARCHIVE_NAME = "cifar-100-python.tar.gz"
# The genuine files, where a checkout has them beside it (scripts and a few checks use them;
# the suite never needs them).
SHARED = Path(__file__).resolve().parents[3] / "shared"
GENUINE_PARTS = sorted((SHARED / "cifar100").glob(f"{ARCHIVE_NAME}.part*"))
GENUINE_MD5 = "9c600102c9dd81479547f7fbb69f9571"  # those parts joined: a repack of the genuine files


@dataclass
class Archive:
    """A generated archive: its path and md5, and the entries pickled into it."""
    path: Path
    md5: str
    entries: dict  # {'train', 'test', 'meta'}
    seconds: float  # time it took to generate and write

    def expected(self, split: str) -> dict:
        return expected_arrays(self.entries[split])


def concatenate_genuine(dest: Path) -> Path:
    """The genuine archive (from the parts in ../shared/cifar100) as one file at `dest`."""
    with dest.open("wb") as out:
        for part in GENUINE_PARTS:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return dest


def assert_equal_arrays(actual: np.ndarray, expected: np.ndarray, what: str = "arrays") -> None:
    """Same shape, dtype kind and values; fast on 150 MB (np.testing's version takes seconds)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    equal = actual == expected
    if not equal.all():
        wrong = np.argwhere(~equal)
        raise AssertionError(f"{what}: {len(wrong)} elements differ, first at index "
                             f"{tuple(wrong[0])}: {actual[tuple(wrong[0])]} != {expected[tuple(wrong[0])]}")

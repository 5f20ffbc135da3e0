"""Fetch, verify and decode the CIFAR-100 python archive, trusting nothing in it.

Order matters for safety: the archive's md5 is checked before tarfile or pickle
sees a byte; members are read into memory (never extracted to disk) and only
the three expected regular files are read; pickles go through an unpickler that
can build numpy arrays and plain containers and nothing else.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from src.errors import UserError
from src.params import CIFAR100_TEST_SIZE, CIFAR100_TRAIN_SIZE

MEMBERS = {"train": "cifar-100-python/train", "test": "cifar-100-python/test",
           "meta": "cifar-100-python/meta"}
SPLIT_SIZES = {"train": CIFAR100_TRAIN_SIZE, "test": CIFAR100_TEST_SIZE}
NUM_FINE, NUM_COARSE = 100, 20
CHUNK = 1 << 20  # bytes per read while streaming
FIX_URL = ("Point data.url at a good copy of cifar-100-python.tar.gz (http(s)://, file:// or a "
           "local path) and data.md5 at its md5, e.g. `dvc exp run -S data.url=/path/to/copy "
           "-S data.md5=<md5sum of it>`.")


def fetch(url: str, dest: Path) -> str:
    """Stream `url` (http(s)://, file:// or a local path) into `dest`; return its md5."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        source, total = _open_http(url)
    else:
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)
                    if scheme == "file" else url).expanduser()
        if not path.is_file():
            raise UserError(f"data.url = {url!r}: expected the CIFAR-100 archive there, found no "
                            f"such file ({path.resolve()}). {FIX_URL}")
        source, total = path.open("rb"), path.stat().st_size
    digest = hashlib.md5()
    received = 0
    with source, dest.open("wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="download",
        mininterval=1.0,
    ) as bar:
        try:
            while chunk := source.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, urllib.error.URLError) as error:  # connection reset mid-way
            raise UserError(f"download of {url} broke off after {received} bytes ({error}). "
                            "Run `dvc repro download` again, or use a local copy. "
                            f"{FIX_URL}") from None
    if total is not None and received != total:
        raise UserError(f"download of {url} is truncated: expected {total} bytes, received "
                        f"{received}. Run `dvc repro download` again, or use a local copy.")
    return digest.hexdigest()


def _open_http(url: str):
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as error:
        raise UserError(f"data.url = {url}: expected the archive, the server answered HTTP "
                        f"{error.code} {error.reason}. Check the address. {FIX_URL}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"data.url = {url}: cannot reach the server ({reason}). Check the "
                        f"network or proxy, or work offline from a local copy. {FIX_URL}") from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def check_md5(actual: str, expected: str, url: str) -> None:
    if actual != expected.lower():
        raise UserError(f"md5 mismatch for {url}: expected {expected} (data.md5), found {actual}. "
                        "The file is corrupt, truncated or a different archive; nothing was "
                        "unpacked. Download it again, or, if you trust this copy, set "
                        f"`-S data.md5={actual}`.")


def read_members(archive: Path) -> dict[str, bytes]:
    """Return the bytes of the train, test and meta members, refusing a hostile tarball."""
    try:
        # Decompress the whole stream once: its CRC is checked only at the end, and tarfile
        # alone may stop early at a garbled header and report a member as missing.
        with gzip.open(archive) as stream:
            tar_bytes = stream.read()
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            members = tar.getmembers()
            for member in members:
                _refuse_unsafe(member)
            by_name = {m.name: m for m in members if m.isfile()}
            missing = [name for name in MEMBERS.values() if name not in by_name]
            if missing:
                found = ", ".join(sorted(by_name)) or "no regular files"
                raise UserError(f"the archive lacks {', '.join(missing)}: expected the members "
                                f"{', '.join(MEMBERS.values())}, found {found}. It is not the "
                                f"CIFAR-100 python archive. {FIX_URL}")
            return {key: tar.extractfile(by_name[name]).read() for key, name in MEMBERS.items()}
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise UserError(f"the archive is not a readable .tar.gz ({error}): expected the gzip "
                        f"tarball cifar-100-python.tar.gz, found a corrupt or truncated file. "
                        f"{FIX_URL}") from None


def _refuse_unsafe(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        problem = "an absolute path" if path.is_absolute() else "a '..' path component"
    elif not (member.isfile() or member.isdir()):
        kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                else "a device or fifo")
        problem = f"{kind} (only regular files are allowed)"
    else:
        return
    raise UserError(f"refusing a hostile archive: member {member.name!r} is {problem}. Nothing "
                    f"was extracted. Get the archive from a trusted source. {FIX_URL}")


class _CifarUnpickler(pickle.Unpickler):
    """Allows exactly the globals that the CIFAR pickles use: numpy array reconstruction."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        target = self.ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")
        return super().find_class(*target)


def restricted_loads(payload: bytes, member: str):
    try:
        obj = _CifarUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as error:  # any failure of an untrusted pickle is the file's fault
        raise UserError(f"refusing member {member}: expected a CIFAR pickle of arrays, lists and "
                        f"strings, found something else ({type(error).__name__}: {error}). "
                        f"{FIX_URL}") from None
    if not isinstance(obj, dict):
        raise UserError(f"member {member}: expected a dict, found {type(obj).__name__}. {FIX_URL}")
    # Python 2 pickles read with encoding="bytes" have byte-string keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def decode_split(entry: dict, split: str) -> dict[str, np.ndarray]:
    """The split's images as uint8 (N, 32, 32, 3) RGB plus int64 fine and coarse labels."""
    member = MEMBERS[split]
    _require_keys(entry, ("data", "fine_labels", "coarse_labels"), member)
    data = entry["data"]
    n = SPLIT_SIZES[split]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (n, 3072):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"member {member}: expected 'data' as uint8 of shape ({n}, 3072), found "
                        f"{dtype} of shape {shape}. {FIX_URL}")
    labels = {}
    for key, classes in (("fine_labels", NUM_FINE), ("coarse_labels", NUM_COARSE)):
        values = np.asarray(entry[key])
        if values.shape != (n,) or values.dtype.kind not in "iu" or not (
            (values >= 0) & (values < classes)
        ).all():
            raise UserError(f"member {member}: expected '{key}' as {n} integers in "
                            f"[0, {classes}), found {values.dtype} of shape {values.shape}. "
                            f"{FIX_URL}")
        labels[key] = values.astype(np.int64)
    # Each row is three 32x32 planes, red, green, blue: to (N, H, W, C) RGB.
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return {"images": images, **labels}


def decode_meta(entry: dict) -> dict[str, list[str]]:
    member = MEMBERS["meta"]
    _require_keys(entry, ("fine_label_names", "coarse_label_names"), member)
    names = {}
    for key, count in (("fine_label_names", NUM_FINE), ("coarse_label_names", NUM_COARSE)):
        values = entry[key]
        if not isinstance(values, list) or len(values) != count or not all(
            isinstance(v, (bytes, str)) for v in values
        ):
            raise UserError(f"member {member}: expected '{key}' as a list of {count} names. "
                            f"{FIX_URL}")
        names[key] = [v.decode("latin1") if isinstance(v, bytes) else v for v in values]
    return names


def _require_keys(entry: dict, keys: tuple[str, ...], member: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise UserError(f"member {member}: expected the keys {', '.join(keys)}, missing "
                        f"{', '.join(missing)}. {FIX_URL}")

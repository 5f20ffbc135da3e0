"""The download stage: fetch over http://, file:// or a path; verify md5 first; refuse bad archives.

Every failure must end with exit status 1, one short paragraph on stderr that says
what was expected and what was found (no traceback), and nothing under data/.
The stage runs as `python -m stages.download` in a copy of the working tree.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest

from helpers import archive as ca
from helpers.archive import ARCHIVE_NAME, assert_equal_arrays
from helpers.project import Project

SPLITS = ("train", "test")


def error_message(result) -> str:
    """The stage's message: what follows 'ERROR: ' on stderr."""
    assert "ERROR: " in result.stderr, f"no error message on stderr:\n{result.stderr[-3000:]}"
    return result.stderr.split("ERROR: ", 1)[1].strip()


def assert_clean_failure(project: Project, result, *fragments: str) -> str:
    """Non-zero exit, a short message containing `fragments`, no traceback, nothing in data/."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"exit status {result.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    message = error_message(result)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the message:\n{message}"
    assert len(message) < 1200 and "\n" not in message, f"not one short paragraph:\n{message}"
    assert project.files_under("data") == [], "the failed stage left files under data/"
    return message


def assert_downloaded(project: Project, archive, url: str) -> None:
    raw = project.root / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    assert [p.name for p in (project.root / "data").iterdir()] == ["raw"]  # no temp folders left
    for split in SPLITS:
        expected = archive.expected(split)
        with np.load(raw / f"{split}.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["coarse_labels", "fine_labels", "images"]
            images = npz["images"]
            assert images.dtype == np.uint8 and images.shape == (len(expected["images"]), 32, 32, 3)
            assert_equal_arrays(images, expected["images"], f"{split} images")
            for key in ("fine_labels", "coarse_labels"):
                assert npz[key].dtype == np.int64
                assert_equal_arrays(npz[key], expected[key], f"{split} {key}")
    meta = json.loads((raw / "meta.json").read_text())
    assert meta["fine_label_names"] == ca.FINE_NAMES
    assert meta["coarse_label_names"] == ca.COARSE_NAMES
    assert meta["archive_md5"] == archive.md5
    assert meta["archive_url"] == url


# --------------------------------------------------------------------------- success

def test_download_over_http(downloaded, cifar_archive):
    project, url, result = downloaded
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert_downloaded(project, cifar_archive, url)
    assert "train: 50000 images" in result.stdout and "test: 10000 images" in result.stdout
    assert cifar_archive.md5 in result.stdout


@pytest.mark.parametrize("form", ["file_url", "absolute_path", "relative_path"])
def test_download_from_local_copy(form, stage_copy, cifar_archive):
    path = cifar_archive.path
    url = {"file_url": path.as_uri(), "absolute_path": str(path),
           "relative_path": os.path.relpath(path, stage_copy.root)}[form]  # from the repo root
    stage_copy.set_params({"data.url": url, "data.md5": cifar_archive.md5})
    result = stage_copy.stage("download")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_downloaded(stage_copy, cifar_archive, url)


# --------------------------------------------------------------------------- md5 first

@pytest.mark.parametrize("content", ["hostile_pickle", "path_traversal", "not_gzip"])
def test_md5_is_checked_before_the_archive_is_read(content, stage_copy, tmp_path):
    """With a wrong md5, not a byte of the archive reaches tarfile or pickle."""
    sentinel = tmp_path / "pickle-ran"
    path = tmp_path / ARCHIVE_NAME
    if content == "hostile_pickle":
        actual = ca.write_archive(path, train=ca.hostile_pickle("os", "system", f"touch {sentinel}"))
    elif content == "path_traversal":
        actual = ca.write_archive(path, hostile="traversal")
    else:
        path.write_text("<html>Log in to the hotel Wi-Fi</html>\n")
        actual = ca.md5sum(path)
    expected = "0123456789abcdef0123456789abcdef"
    stage_copy.set_params({"data.url": str(path), "data.md5": expected})
    message = assert_clean_failure(stage_copy, stage_copy.stage("download"),
                                   "md5 mismatch", f"expected {expected}", f"found {actual}",
                                   f"-S data.md5={actual}")
    for later_check in ("refusing", "readable", "lacks"):
        assert later_check not in message
    assert not sentinel.exists()


def test_wrong_md5_names_both_digests(stage_copy, cifar_archive, http_server):
    url = http_server.publish(cifar_archive.path)
    wrong = "f" * 32
    stage_copy.set_params({"data.url": url, "data.md5": wrong})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), "md5 mismatch", url,
                         f"expected {wrong}", f"found {cifar_archive.md5}")


# --------------------------------------------------------------------------- fetching

def test_unreachable_host(stage_copy, closed_port):
    url = f"http://127.0.0.1:{closed_port}/{ARCHIVE_NAME}"
    stage_copy.set_params({"data.url": url})
    message = assert_clean_failure(stage_copy, stage_copy.stage("download", timeout=120),
                                   url, "cannot reach the server")
    assert "refused" in message.lower()


def test_http_404(stage_copy, http_server):
    url = http_server.url("no-such-archive.tar.gz")
    stage_copy.set_params({"data.url": url})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), url, "expected the archive",
                         "HTTP 404")


def test_truncated_download(stage_copy, cifar_archive, http_server):
    http_server.publish(cifar_archive.path)
    url = http_server.truncated_url(cifar_archive.path.name)
    size = cifar_archive.path.stat().st_size
    stage_copy.set_params({"data.url": url, "data.md5": cifar_archive.md5})
    assert_clean_failure(stage_copy, stage_copy.stage("download", timeout=120), "truncated",
                         f"expected {size} bytes", f"received {size // 2}")


@pytest.mark.parametrize("form", ["absolute_path", "file_url"])
def test_missing_local_file(form, stage_copy, tmp_path):
    path = tmp_path / "nowhere" / ARCHIVE_NAME
    url = path.as_uri() if form == "file_url" else str(path)
    stage_copy.set_params({"data.url": url})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), "expected the CIFAR-100 archive",
                         "found no such file", str(path))


def test_unsupported_url_scheme_is_refused_by_params(stage_copy):
    stage_copy.set_params({"data.url": "ftp://example.org/cifar-100-python.tar.gz"})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), "data.url",
                         "ftp://example.org/cifar-100-python.tar.gz", "http://")


# --------------------------------------------------------------------------- bad gzip / tar

def _small_archive_bytes(tmp_path) -> bytes:
    ca.write_archive(tmp_path / "good.tar.gz")
    return (tmp_path / "good.tar.gz").read_bytes()


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 256]) + data[middle + 256:]


def _plain_tar(tmp_path) -> bytes:
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        info, payload = ca.file_member(ca.MEMBERS["meta"], ca.py2_pickle(ca.make_meta()))
        tar.addfile(info, io.BytesIO(payload))
    return (tmp_path / "plain.tar").read_bytes()


BAD_FILES = {
    "truncated_gzip": lambda tmp: (lambda data: data[:len(data) // 2])(_small_archive_bytes(tmp)),
    "corrupt_gzip": lambda tmp: _corrupt(_small_archive_bytes(tmp)),
    "html_page": lambda tmp: b"<!doctype html><html><body>Please log in</body></html>\n",
    "empty_file": lambda tmp: b"",
    "tar_not_gzipped": _plain_tar,
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unreadable_archive(kind, stage_copy, tmp_path):
    """md5 set to the bad file's own md5, so the check passes and the failure is gzip/tar's."""
    path = tmp_path / ARCHIVE_NAME
    path.write_bytes(BAD_FILES[kind](tmp_path))
    stage_copy.set_params({"data.url": str(path), "data.md5": ca.md5sum(path)})
    message = assert_clean_failure(stage_copy, stage_copy.stage("download"))
    assert "expected" in message and "found" in message
    assert "not a readable .tar.gz" in message or "the archive lacks" in message, message


@pytest.mark.parametrize("missing", ["train", "test", "meta"])
def test_member_missing(missing, stage_copy, tmp_path):
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, drop_members=[missing])
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    present = [name for key, name in ca.MEMBERS.items() if key != missing]
    assert_clean_failure(stage_copy, stage_copy.stage("download"), "the archive lacks",
                         f"lacks {ca.MEMBERS[missing]}", f"found {', '.join(sorted(present))}")


# --------------------------------------------------------------------------- hostile tarballs

@pytest.mark.parametrize("kind, member, problem", [
    ("traversal", "../evil", "a '..' path component"),
    ("nested_traversal", "cifar-100-python/../../evil", "a '..' path component"),
    ("symlink", "cifar-100-python/train", "a symbolic link"),
    ("hardlink", "cifar-100-python/train", "a hard link"),
    ("fifo", "cifar-100-python/fifo", "a device or fifo"),
])
def test_hostile_member_is_refused(kind, member, problem, stage_copy, tmp_path):
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, hostile=kind)
    with tarfile.open(path) as tar:  # the archive really holds the hostile member
        assert member in tar.getnames()
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), "refusing a hostile archive",
                         f"member {member!r} is {problem}", "Nothing was extracted")
    root = stage_copy.root
    for written in (root / "evil", root.parent / "evil", root / "data" / "evil"):
        assert not written.exists()


def test_absolute_path_member_is_refused(stage_copy, tmp_path):
    target = tmp_path / "outside" / "evil"
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, extra_members=[ca.file_member(str(target), b"pwned\n")])
    with tarfile.open(path) as tar:
        assert str(target) in tar.getnames()
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), "refusing a hostile archive",
                         f"member {str(target)!r} is an absolute path")
    assert not target.exists()


# --------------------------------------------------------------------------- hostile pickles

@pytest.mark.parametrize("member, module, name, args", [
    ("meta", "os", "system", ("touch {sentinel}",)),
    ("train", "os", "system", ("touch {sentinel}",)),
    ("train", "builtins", "exec", ("open({sentinel!r}, 'w').close()",)),
    ("train", "subprocess", "check_call", (["touch", "{sentinel}"],)),
])
def test_pickle_importing_other_globals_is_refused_not_run(member, module, name, args,
                                                            stage_copy, tmp_path):
    sentinel = str(tmp_path / "pickle-ran")
    args = tuple([a.format(sentinel=sentinel) for a in arg] if isinstance(arg, list)
                 else arg.format(sentinel=sentinel) for arg in args)
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, **{member: ca.hostile_pickle(module, name, *args)})
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    assert_clean_failure(stage_copy, stage_copy.stage("download"),
                         f"refusing member {ca.MEMBERS[member]}", "expected a CIFAR pickle",
                         f"'{module}.{name}' is forbidden")
    assert not (tmp_path / "pickle-ran").exists(), "the pickle's code ran"


# --------------------------------------------------------------------------- bad arrays

def test_wrong_shape_and_dtype(stage_copy, tmp_path):
    train = ca.make_split(50, "train", np.random.default_rng(0))
    train["data"] = train["data"].astype(np.float32)
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, train=train)
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    assert_clean_failure(stage_copy, stage_copy.stage("download"),
                         f"member {ca.MEMBERS['train']}",
                         "expected 'data' as uint8 of shape (50000, 3072)",
                         "found float32 of shape (50, 3072)")


def test_missing_key(stage_copy, tmp_path):
    train = ca.make_split(50, "train", np.random.default_rng(0))
    del train["coarse_labels"]
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, train=train)
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    assert_clean_failure(stage_copy, stage_copy.stage("download"), f"member {ca.MEMBERS['train']}",
                         "expected the keys data, fine_labels, coarse_labels", "missing coarse_labels")


@pytest.mark.parametrize("defect", ["data_4d", "fine_label_out_of_range"])
def test_bad_test_split_after_train_was_written(defect, stage_copy, cifar_archive, tmp_path):
    """A full-size train split decodes and is written first; the test split then fails:
    the train.npz already written must not survive either."""
    test = dict(cifar_archive.entries["test"])
    if defect == "data_4d":
        test["data"] = test["data"].reshape(10_000, 3, 32, 32)
        fragments = ("expected 'data' as uint8 of shape (10000, 3072)",
                     "found uint8 of shape (10000, 3, 32, 32)")
    else:
        test["fine_labels"] = [*test["fine_labels"][:-1], 100]
        fragments = ("expected 'fine_labels' as 10000 integers in [0, 100)",)
    path = tmp_path / ARCHIVE_NAME
    md5 = ca.write_archive(path, train=cifar_archive.entries["train"], test=test)
    stage_copy.set_params({"data.url": str(path), "data.md5": md5})
    result = stage_copy.stage("download")
    assert "train: 50000 images" in result.stdout  # it did get as far as writing train.npz
    assert_clean_failure(stage_copy, result, f"member {ca.MEMBERS['test']}", *fragments)

"""Stage `download`: fetch the CIFAR-100 python archive, verify it, decode it to arrays.

    python -m stages.download            (run by `dvc repro download`)

In:  params data.url, data.md5
Out: data/raw/{train,test}.npz  images uint8 (N, 32, 32, 3) RGB, fine_labels, coarse_labels
     data/raw/meta.json         class and superclass names, the archive's url and md5
Nothing is left under data/ if any step fails.
"""
import json

from src.atomic import staged_dir
from src.data import splits
from src.data.archive import MEMBERS, check_md5, decode_meta, decode_split, fetch, read_members, restricted_loads
from src.errors import run
from src.params import load_params

OUT_DIR = "data/raw"


def main() -> None:
    params = load_params().data
    with staged_dir(OUT_DIR) as out:
        archive = out / "cifar-100-python.tar.gz"
        md5 = fetch(params.url, archive)
        check_md5(md5, params.md5, params.url)  # before tarfile or pickle reads a byte
        members = read_members(archive)
        archive.unlink()

        names = decode_meta(restricted_loads(members.pop("meta"), MEMBERS["meta"]))
        for split in ("train", "test"):
            entry = restricted_loads(members.pop(split), MEMBERS[split])
            arrays = decode_split(entry, split)
            splits.save(out / f"{split}.npz", arrays)
            print(f"{split}: {len(arrays['images'])} images")
        meta = {"archive_url": params.url, "archive_md5": md5, **names}
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {OUT_DIR}/ (archive md5 {md5})")


if __name__ == "__main__":
    run(main)

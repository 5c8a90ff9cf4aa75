"""The split stage: layouts, validation of every file, duplicates, determinism, sources."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import split
from pipeline.config.compose import compose
from pipeline.data.sources import safe_extract
from pipeline.errors import DataError
from tests.conftest import make_image, path_overrides


def run_split(tmp_path: Path, source: Path | str, *overrides: str) -> dict:
    overrides = [o for o in path_overrides(tmp_path) if not o.startswith("hydra.")] + list(overrides)
    return split.run(compose([f"data.source={source}", *overrides]))


def rows(tmp_path: Path, name: str) -> list[str]:
    return (tmp_path / "split" / f"{name}.csv").read_text().splitlines()[1:]


def build_damaged_tree(root: Path) -> dict:
    """Every bad case the stage must survive; returns what the report must say."""
    good = []
    for k, c in enumerate(("shirt", "pants")):
        for i in range(6):  # distinct fixed seeds: no two photos alike across classes (no label conflict)
            good.append(make_image(root / c / f"{c}{i}.jpg", seed=100 + 10 * k + i, fmt="JPEG"))
    good += [
        make_image(root / "shirt" / "gray.png", mode="L", seed=1),
        make_image(root / "shirt" / "alpha.PNG", mode="RGBA", seed=2),
        make_image(root / "shirt" / "cmyk.JPG", mode="CMYK", seed=3, fmt="JPEG"),
        make_image(root / "pants" / "palette.gif", mode="P", seed=4, fmt="GIF"),
        make_image(root / "pants" / "bitmap.Bmp", seed=5, fmt="BMP"),
        make_image(root / "pants" / "tiny.png", size=(1, 1), seed=6),
        make_image(root / "pants" / "large.jpg", size=(4000, 3000), seed=7, fmt="JPEG"),
    ]
    (root / "shirt" / "empty.jpg").write_bytes(b"")
    whole = (root / "shirt" / "shirt0.jpg").read_bytes()
    (root / "shirt" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "pants" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (root / "pants" / "notes.txt").write_text("not an image")
    (root / "shirt" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "pants" / "Thumbs.db").write_bytes(b"\x00\x01")
    make_image(root / "pants" / ".hidden.jpg", seed=8, fmt="JPEG")
    (root / "empty_class").mkdir()
    shutil.copy(root / "shirt" / "shirt1.jpg", root / "shirt" / "shirt1_copy.jpg")  # duplicate
    good.append(root / "shirt" / "shirt1_copy.jpg")
    conflict = make_image(root / "shirt" / "both.jpg", seed=9, fmt="JPEG")
    shutil.copy(conflict, root / "pants" / "both_again.jpg")  # same photo, two classes
    bad = {"empty.jpg": "empty", "truncated.jpg": "truncated", "garbage.jpg": "", "notes.txt": "not an image"}
    return {"good": good, "bad": bad, "conflict": [conflict, root / "pants" / "both_again.jpg"]}


def test_damaged_tree_is_reported_and_nothing_lost(tmp_path):
    root = tmp_path / "damaged"
    expected = build_damaged_tree(root)
    report = run_split(tmp_path, root)

    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == set(expected["bad"])
    for name, word in expected["bad"].items():
        assert word in skipped[name]
    assert {Path(p).name for p in report["ignored"]} >= {".DS_Store", "Thumbs.db", ".hidden.jpg"}
    assert report["classes"] == ["pants", "shirt"]  # the empty folder is no class

    manifest = {line.split(",")[0] for s in ("train", "val", "test") for line in rows(tmp_path, s)}
    assert manifest == {str(p.resolve()) for p in expected["good"]}  # every decodable image kept
    assert sum(report["counts"].values()) == len(expected["good"])

    [group] = report["duplicates"]
    assert {Path(p).name for p in group["paths"]} == {"shirt1.jpg", "shirt1_copy.jpg"}
    in_split = [s for s in ("train", "val", "test") if any("shirt1" in line for line in rows(tmp_path, s))]
    assert in_split == [group["split"]]  # both copies in one split

    [conflict] = report["conflicts"]
    assert conflict["labels"] == ["pants", "shirt"]
    assert not any("both" in line for s in ("train", "val", "test") for line in rows(tmp_path, s))


def test_same_files_give_byte_identical_outputs_whatever_the_order(tmp_path):
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    for c in ("x", "y", "z"):
        for i in range(10):
            make_image(first / c / f"{i}.png", seed=i + 100 * ord(c))
    second.mkdir(parents=True)
    for folder in sorted(first.iterdir(), reverse=True):  # different creation order
        for file in sorted(folder.iterdir(), reverse=True):
            (second / folder.name).mkdir(exist_ok=True)
            shutil.copy(file, second / folder.name / file.name)
    run_split(tmp_path / "a", first, "seed=7")
    run_split(tmp_path / "b", second, "seed=7")
    for name in ("train.csv", "val.csv", "test.csv", "classes.json"):
        a = (tmp_path / "a" / "split" / name).read_text().replace(str(first), "ROOT")
        b = (tmp_path / "b" / "split" / name).read_text().replace(str(second), "ROOT")
        assert a == b
    run_split(tmp_path / "a", first, "seed=7")
    assert (tmp_path / "a" / "split" / "train.csv").read_text().count("\n") == 25  # header + 8 x 3


def test_presplit_layout_kept_or_pooled(tmp_path):
    root = tmp_path / "presplit"
    seeds = iter(range(1000))  # every image distinct: duplicates would be grouped and move the counts
    for split_name, n in (("train", 8), ("validation", 2), ("test", 3)):
        for c in ("a", "b"):
            for i in range(n):
                make_image(root / split_name / c / f"{i}.png", seed=next(seeds))
    kept = run_split(tmp_path, root)
    assert kept["counts"] == {"train": 16, "val": 4, "test": 6}
    pooled = run_split(tmp_path, root, "data.split.respect_existing=false", "data.split.fractions=[0.5,0.25,0.25]")
    assert pooled["counts"] == {"train": 14, "val": 6, "test": 6}  # per class 13 -> 7 + 3 + 3


def test_class_too_small_for_every_split_is_an_error_naming_it(tmp_path):
    root = tmp_path / "small"
    for i in range(10):
        make_image(root / "big" / f"{i}.png", seed=i)
    make_image(root / "rare" / "only.png", seed=99)
    with pytest.raises(DataError, match="'rare'"):
        run_split(tmp_path, root)


def test_limit_per_class(tmp_path, tiny_dataset):
    report = run_split(tmp_path, tiny_dataset, "data.limit_per_class=2")
    assert all(n <= 2 for split_counts in report["per_class"].values() for n in split_counts.values())


@pytest.fixture
def http_folder(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (a free port) for the download path."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_archive_url_is_downloaded_verified_and_extracted(tmp_path, tiny_dataset, http_folder):
    www, url = http_folder
    archive = www / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(tiny_dataset.rglob("*.png")):
            zf.write(file, f"tiny-main/{file.relative_to(tiny_dataset)}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    report = run_split(tmp_path, f"{url}/tiny.zip", f"data.sha256={digest}")
    assert sum(report["counts"].values()) == 36 and report["classes"] == ["cat", "dog", "fox"]

    wrong = "0" * 64  # the cached copy no longer validates: fetched again, then refused
    with pytest.raises(DataError, match="sha256"):
        run_split(tmp_path, f"{url}/tiny.zip", f"data.sha256={wrong}")


def zip_tree(tree: Path, archive: Path, wrapper: str = "data-master") -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(tree.rglob("*.png")):
            zf.write(file, f"{wrapper}/{file.relative_to(tree)}")
    return archive


def two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    """Two different trees: 3 classes x 6 images, and 2 other classes x 9 images."""
    first, second = tmp_path / "first", tmp_path / "second"
    for c, name in enumerate(("cat", "dog", "fox")):
        for i in range(6):
            make_image(first / name / f"{i}.png", seed=1000 + 10 * c + i)
    for c, name in enumerate(("shirt", "pants")):
        for i in range(9):
            make_image(second / name / f"{i}.png", seed=2000 + 10 * c + i)
    return first, second


def test_two_archives_with_one_name_keep_their_own_content(tmp_path):
    first, second = two_datasets(tmp_path)
    a = zip_tree(first, tmp_path / "a" / "master.zip")
    b = zip_tree(second, tmp_path / "b" / "master.zip")
    report_a = run_split(tmp_path, a)
    report_b = run_split(tmp_path, b)
    assert report_a["classes"] == ["cat", "dog", "fox"] and sum(report_a["counts"].values()) == 18
    assert report_b["classes"] == ["pants", "shirt"] and sum(report_b["counts"].values()) == 18

    zip_tree(first, a)  # the same file name, changed content: extracted anew
    (tmp_path / "first" / "cat" / "0.png").unlink()
    zip_tree(first, a)
    assert sum(run_split(tmp_path, a)["counts"].values()) == 17


def test_two_urls_with_one_name_and_a_damaged_download_are_fetched_again(tmp_path, http_folder):
    www, url = http_folder
    first, second = two_datasets(tmp_path)
    zip_tree(first, www / "one" / "master.zip")
    zip_tree(second, www / "two" / "master.zip")
    assert run_split(tmp_path, f"{url}/one/master.zip")["classes"] == ["cat", "dog", "fox"]
    assert run_split(tmp_path, f"{url}/two/master.zip")["classes"] == ["pants", "shirt"]

    original = (www / "one" / "master.zip").read_bytes()
    [cached] = [p for p in (tmp_path / "downloads" / "downloads").rglob("master.zip") if p.read_bytes() == original]
    cached.write_bytes(original[:100])  # an interrupted copy that no longer matches its record
    assert run_split(tmp_path, f"{url}/one/master.zip")["classes"] == ["cat", "dog", "fox"]
    assert cached.read_bytes() == (www / "one" / "master.zip").read_bytes()


@pytest.mark.parametrize("name", ["data.zip", "data.tar.gz"])
def test_a_text_file_named_as_an_archive_is_a_clear_error_that_does_not_stick(tmp_path, name):
    archive = tmp_path / name
    archive.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(DataError, match="not a readable") as error:
        run_split(tmp_path, archive)
    assert str(archive) in str(error.value)
    first, _ = two_datasets(tmp_path)
    if name.endswith(".zip"):
        zip_tree(first, archive)
    else:
        import tarfile

        with tarfile.open(archive, "w:gz") as tf:
            tf.add(first, arcname="data")
    assert run_split(tmp_path, archive)["classes"] == ["cat", "dog", "fox"]  # the good copy is used


def test_a_broken_download_is_deleted_so_the_next_run_fetches_it_again(tmp_path, http_folder):
    www, url = http_folder
    (www / "data.zip").write_text("not a zip")
    with pytest.raises(DataError, match="next run downloads it again"):
        run_split(tmp_path, f"{url}/data.zip")
    assert not list((tmp_path / "downloads" / "downloads").rglob("data.zip"))
    zip_tree(two_datasets(tmp_path)[0], www / "data.zip")
    assert run_split(tmp_path, f"{url}/data.zip")["classes"] == ["cat", "dog", "fox"]


@pytest.mark.parametrize("layout", ["folders", "presplit"])
def test_one_class_is_not_a_classification_and_leaves_no_stale_report(tmp_path, tiny_dataset, layout):
    report = tmp_path / "reports" / "split_report.json"
    run_split(tmp_path, tiny_dataset)
    assert report.exists()
    root = tmp_path / "single"
    for i in range(9):
        parts = (("train", "validation", "test")[i % 3], "shirt") if layout == "presplit" else ("shirt",)
        make_image(root.joinpath(*parts) / f"{i}.png", seed=500 + i)
    with pytest.raises(DataError, match="Only one class was found \\(shirt, 9 images\\)") as error:
        run_split(tmp_path, root)
    assert "one folder per class" in str(error.value)
    assert not report.exists()  # no earlier report left to mislead


def test_unreachable_url_fails_fast_with_advice(tmp_path):
    with pytest.raises(DataError, match="data.source="):
        run_split(tmp_path, "http://127.0.0.1:9/missing.zip")
    assert not [p for p in (tmp_path / "downloads").rglob("*") if p.is_file()]  # no partial download kept


@pytest.mark.parametrize("entry", ["../escape.txt", "/abs/escape.txt"])
def test_archive_entries_cannot_escape(tmp_path, entry):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr(entry, "evil")
    with pytest.raises(DataError, match="unsafe"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.slow  # every one of the 3781 photos of the real dataset validated: 3 s
def test_shared_clothing_dataset_counts(tmp_path, shared_dataset):
    report = run_split(tmp_path, shared_dataset)
    assert report["counts"] == {"train": 3068, "val": 341, "test": 372}
    assert len(report["classes"]) == 10 and not report["skipped"]
    for name, n in report["counts"].items():
        assert len(rows(tmp_path, name)) == n
    assert json.loads((tmp_path / "split" / "classes.json").read_text()) == report["classes"]
    with Image.open(rows(tmp_path, "test")[0].split(",")[0]) as image:
        assert image.size[0] > 0


def test_training_refuses_a_split_without_validation_images(tmp_path, tiny_dataset, capsys):
    from pipeline import train

    run_split(tmp_path, tiny_dataset, "data.split.fractions=[1,0,0]")
    assert len(rows(tmp_path, "train")) == 36 and not rows(tmp_path, "val")
    said = capsys.readouterr().out  # split says so at once, where it can be fixed
    assert "warning: the val split has no images: training refuses it" in said
    assert "warning: the test split has no images: evaluate has nothing to measure" in said
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = compose(
        [
            f"data.source={tiny_dataset}",
            f"tracking.uri={uri}",
            "model=residual_cnn",
            *[o for o in path_overrides(tmp_path) if not o.startswith("hydra.")],
        ]
    )
    with pytest.raises(DataError, match=r"val\.csv lists no images.*data\.split\.fractions"):
        train.run(config)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()  # nothing recorded


def test_an_image_edited_in_place_changes_the_data_identity(tmp_path, tiny_dataset):
    from pipeline.data.manifests import manifest_hash

    before = run_split(tmp_path, tiny_dataset)["manifest_sha256"]
    assert before == manifest_hash(tmp_path / "split")
    edited = next(line.split(",")[0] for line in rows(tmp_path, "train"))
    make_image(Path(edited), size=(48, 40), seed=999, pattern=0)  # new pixels, same name and label
    after = run_split(tmp_path, tiny_dataset)["manifest_sha256"]
    assert after != before and after == manifest_hash(tmp_path / "split")
    changed = [line for line in rows(tmp_path, "train") if line.startswith(edited + ",")]
    assert changed and changed[0].split(",")[2] == hashlib.sha256(Path(edited).read_bytes()).hexdigest()


def test_a_failed_split_leaves_no_earlier_manifests(tmp_path, tiny_dataset):
    run_split(tmp_path, tiny_dataset)
    assert (tmp_path / "split" / "train.csv").exists()
    with pytest.raises(DataError):
        run_split(tmp_path, tmp_path / "no-such-folder")
    assert not any(
        (tmp_path / "split" / name).exists() for name in ("train.csv", "val.csv", "test.csv", "classes.json")
    )
    assert not (tmp_path / "reports" / "split_report.json").exists()


def test_a_class_far_smaller_than_the_others_is_flagged(tmp_path, capsys):
    root = tmp_path / "lopsided"
    for i in range(60):
        make_image(root / "common" / f"c{i:02d}.png", seed=i, pattern=0)
    for i in range(4):
        make_image(root / "rare" / f"r{i}.png", seed=100 + i, pattern=1)
    report = run_split(tmp_path, root)
    assert report["per_class"]["train"] == {"common": 48, "rare": 2}
    out = capsys.readouterr().out
    assert "warning: class 'rare' has 2 train image(s) against 48 of 'common'" in out
    assert "class 'common'" not in out


def test_a_train_val_split_drawn_per_seed_keeps_test_and_each_class_val_count(tmp_path):
    from collections import Counter

    from pipeline.data.cache import disk_cache
    from pipeline.data.images import decode_all
    from pipeline.data.manifests import Split
    from pipeline.data.partition import draw_train_val

    source = tmp_path / "src"
    for c, name in enumerate(["cat", "dog"]):
        for i in range(20):
            make_image(source / name / f"{name}_{i:02d}.png", size=(24, 20), seed=100 * c + i, pattern=c)
    shutil.copy(source / "cat" / "cat_00.png", source / "cat" / "cat_copy.png")  # one content, two files
    run_split(tmp_path, source, "data.split.fractions=[0.6,0.2,0.2]")
    split = Split.read(tmp_path / "split")
    drawn = {seed: draw_train_val(split, seed) for seed in (1, 2)}
    again = draw_train_val(split, 1)
    assert again.val.paths == drawn[1].val.paths and again.digests == drawn[1].digests  # a seed: one draw
    assert set(drawn[1].val.paths) != set(drawn[2].val.paths)
    for d in drawn.values():
        assert d.test == split.test and d.version == split.version  # test and the data version untouched
        assert sorted(d.train.paths + d.val.paths) == sorted(split.train.paths + split.val.paths)
        assert Counter(d.val.labels) == Counter(split.val.labels)  # stratified: each class's val count kept
        copies = [p for p in d.train.paths + d.val.paths if Path(p).name in ("cat_00.png", "cat_copy.png")]
        assert len(copies) == 2 and (set(copies) <= set(d.train.paths) or set(copies) <= set(d.val.paths))
        assert d.train_val_digest() != split.train_val_digest()
    assert drawn[1].train_val_digest() != drawn[2].train_val_digest()
    # a manifest read back has the digest of its file; a drawn set the digest its manifest would have
    assert split.train.manifest_digest() == hashlib.sha256((tmp_path / "split" / "train.csv").read_bytes()).hexdigest()
    assert drawn[1].digests["val"] == drawn[1].val.manifest_digest() != split.digests["val"]
    # its images, decoded through the manifests' kept arrays, are the files themselves
    cache = disk_cache(str(tmp_path / "cache"), "auto")
    pixels = drawn[2].train.decoded((20, 24), cache)
    assert np.array_equal(pixels, decode_all(drawn[2].train.paths, drawn[2].train.sha256, (20, 24)))

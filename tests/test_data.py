"""Data: Shapes determinism and masks, image folders in both layouts, the safe zip import."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from vitcore.data import DataBundle, from_image_folder, from_zip
from vitcore.data.shapes import SHAPE_CLASSES, ShapesDataset, shapes_bundle


# --------------------------------------------------------------------------- shapes
def test_shapes_deterministic_by_seed_and_prefix_stable():
    a = ShapesDataset(10, 32, seed=3)
    b = ShapesDataset(10, 32, seed=3)
    longer = ShapesDataset(15, 32, seed=3)
    other = ShapesDataset(10, 32, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.images, longer.images[:10])  # sample i depends only on (seed, i)
    assert not torch.equal(a.images, other.images)
    assert a.images.shape == (10, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.targets.tolist() == [i % 5 for i in range(10)]


def test_shapes_getitem_is_normalised_pixels():
    ds = ShapesDataset(5, 32, seed=0)
    x, y = ds[2]
    assert x.shape == (3, 32, 32) and y == 2
    expected = (ds.images[2].float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, expected)
    image, label, mask = ds.sample(2)
    assert image.size == (32, 32) and label == 2 and mask.shape == (32, 32) and mask.dtype == bool
    assert np.array_equal(np.asarray(image), ds.images[2].permute(1, 2, 0).numpy())


def test_shapes_masks_cover_the_bright_object():
    ds = ShapesDataset(25, 32, seed=1)
    for i in range(len(ds)):
        image, _, mask = ds.sample(i)
        pixels = np.asarray(image, dtype=float).sum(-1)  # (H, W) brightness
        assert 0.03 < mask.mean() < 0.6, (i, mask.mean())
        # the object is drawn bright on a dark background: inside the mask is brighter than outside
        assert pixels[mask].mean() > pixels[~mask].mean() + 100, i
    # circles fill more of their bounding box than stars: a class-dependent mask property
    fill = {c: [] for c in range(5)}
    for i in range(len(ds)):
        m = ds.masks[i]
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill[int(ds.targets[i])].append(float(m.sum() / box))
    assert np.mean(fill[0]) > np.mean(fill[4]) + 0.2


def test_shapes_any_image_size_and_class_subset():
    ds = ShapesDataset(4, (48, 64), classes=("circle", "star"), seed=0)
    assert ds.images.shape == (4, 3, 48, 64) and ds.masks.shape == (4, 48, 64)
    assert ds.class_names == ["circle", "star"]
    with pytest.raises(ValueError, match="at least 2 distinct"):
        ShapesDataset(4, 32, classes=("circle", "hexagon"))


def test_public_data_names_come_from_their_modules():
    import subprocess
    import sys

    import vitcore
    from vitcore import data

    fresh = subprocess.run([sys.executable, "-c", "import vitcore; print(vitcore.shapes_bundle.__module__, "
                            "vitcore.DataBundle.__module__)"], capture_output=True, text=True, timeout=120)
    assert fresh.stdout.split() == ["vitcore.data.shapes", "vitcore.data.bundle"], fresh.stderr

    for name in ("shapes_bundle", "ShapesDataset", "SHAPE_CLASSES", "SHAPES_NORMALIZATION"):
        assert getattr(data, name) is getattr(data.shapes, name)
    assert vitcore.shapes_bundle is shapes_bundle and vitcore.ShapesDataset is ShapesDataset
    with pytest.raises(AttributeError):
        data.no_such_thing  # noqa: B018


def test_shapes_bundle_contract():
    data = shapes_bundle(32, per_class_train=4, per_class_val=2, batch_size=8, seed=0)
    assert isinstance(data, DataBundle)
    assert data.class_names == list(SHAPE_CLASSES)
    assert data.dataset_sizes == {"train": 20, "val": 10}
    assert data.image_size == (32, 32) and data.normalization == ((0.5,) * 3, (0.5,) * 3)
    x, y = next(iter(data.dataloaders["train"]))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long
    train, val = data.datasets["train"].images, data.datasets["val"].images
    assert not any(torch.equal(t, v) for t in train for v in val)  # val never repeats a training image


# --------------------------------------------------------------------------- image folders
def _png(path, colour, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_train_val_layout(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls, colour in (("ants", (255, 0, 0)), ("bees", (0, 0, 255))):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", colour)
    (tmp_path / "train" / "ants" / "notes.txt").write_text("not an image")
    data = from_image_folder(tmp_path, image_size=16, batch_size=4, augment=False)
    assert data.class_names == ["ants", "bees"]
    assert data.dataset_sizes == {"train": 6, "val": 4}
    x, y = next(iter(data.dataloaders["val"]))
    assert x.shape == (4, 3, 16, 16)
    # val transform: Normalize with ImageNet statistics, so a pure red image has a known value
    red = (1.0 - 0.485) / 0.229
    assert y.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(x[0, 0], torch.full((16, 16), red))


def test_image_folder_single_layout_split_is_deterministic(tmp_path):
    for cls in ("cat", "dog", "fox"):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.jpg", (i * 40, 10, 10))
    a = from_image_folder(tmp_path, 16, 4, seed=1)
    b = from_image_folder(tmp_path, 16, 4, seed=1)
    c = from_image_folder(tmp_path, 16, 4, seed=2)
    assert a.class_names == ["cat", "dog", "fox"]
    assert a.dataset_sizes == {"train": 12, "val": 3}  # one of five per class goes to val
    assert a.datasets["val"].samples == b.datasets["val"].samples
    assert a.datasets["val"].samples != c.datasets["val"].samples
    val_paths = {p for p, _ in a.datasets["val"].samples}
    assert val_paths.isdisjoint(p for p, _ in a.datasets["train"].samples)
    x, _ = a.datasets["train"][0]  # augmented train transform still yields the requested size
    assert x.shape == (3, 16, 16)


def test_image_folder_refuses_bad_layouts(tmp_path):
    _png(tmp_path / "only" / "a.png", (0, 0, 0))
    _png(tmp_path / "only" / "b.png", (0, 0, 0))
    with pytest.raises(ValueError, match="at least 2"):
        from_image_folder(tmp_path, 16)
    with pytest.raises(ValueError, match="not a folder"):
        from_image_folder(tmp_path / "missing", 16)


# --------------------------------------------------------------------------- zip battery
def _png_bytes(colour=(200, 30, 30), size=(12, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _good_entries(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{cls}/{i}.png": _png_bytes((40 * i, 200 if cls == "a" else 20, 90))
            for cls in ("a", "b") for i in range(3)}


def test_zip_good_with_junk_and_wrapper_folder():
    entries = _good_entries("dataset/")
    entries.update({
        "__MACOSX/dataset/a/._0.png": b"resource fork",
        "dataset/a/.hidden.png": b"nope",
        "dataset/b/readme.txt": b"text",
        "dataset/.DS_Store": b"\x00\x01",
    })
    data = from_zip(_zip(entries), image_size=8, batch_size=2)
    assert data.class_names == ["a", "b"]
    assert data.dataset_sizes["train"] + data.dataset_sizes["val"] == 6
    x, _ = next(iter(data.dataloaders["val"]))
    assert x.shape[1:] == (3, 8, 8)


def test_zip_train_val_layout():
    entries = {f"{split}/{cls}/{i}.png": _png_bytes() for split in ("train", "val") for cls in "xy" for i in range(2)}
    data = from_zip(_zip(entries), image_size=8)
    assert data.dataset_sizes == {"train": 4, "val": 4} and data.class_names == ["x", "y"]


@pytest.mark.parametrize(
    ("name", "match"),
    [("../evil/x.png", r"outside the archive"), ("a/../../x.png", r"outside the archive"),
     ("/etc/x.png", "absolute"), ("C:/Windows/x.png", "absolute"), ("\\\\server\\x.png", "absolute")],
)
def test_zip_refuses_unsafe_names(tmp_path, name, match):
    entries = _good_entries()
    entries[name] = _png_bytes()
    before = set(tmp_path.parent.iterdir())
    with pytest.raises(ValueError, match=match):
        from_zip(_zip(entries), image_size=8)
    assert set(tmp_path.parent.iterdir()) == before  # nothing written next to us


def test_zip_bomb_is_refused():
    entries = _good_entries()
    entries["a/bomb.png"] = b"\x00" * (5 * 2**20)  # 5 MiB of zeros deflate to a few KiB
    with pytest.raises(ValueError, match="zip bomb"):
        from_zip(_zip(entries), image_size=8)


def test_zip_size_and_member_limits():
    with pytest.raises(ValueError, match="MiB; the limit"):
        from_zip(_zip(_good_entries()), image_size=8, max_total_bytes=100)
    with pytest.raises(ValueError, match="entries; the limit is 3"):
        from_zip(_zip(_good_entries()), image_size=8, max_members=3)


def test_zip_refuses_junk_only_one_class_empty_and_not_zip():
    with pytest.raises(ValueError, match="no images"):
        from_zip(_zip({"a/notes.txt": b"hi", "__MACOSX/a/._x.png": b"x", "b/.x.png": b"x"}), image_size=8)
    with pytest.raises(ValueError, match="at least 2"):
        from_zip(_zip({f"only/{i}.png": _png_bytes() for i in range(3)}), image_size=8)
    with pytest.raises(ValueError, match="fewer than 2"):
        from_zip(_zip({"a/0.png": _png_bytes(), "a/1.png": _png_bytes(), "b/0.png": _png_bytes()}), image_size=8)
    with pytest.raises(ValueError, match="empty"):
        from_zip(_zip({}), image_size=8)
    with pytest.raises(ValueError, match="not a readable zip"):
        from_zip(b"this is not a zip file at all", image_size=8)
    with pytest.raises(ValueError, match="not a readable image"):
        entries = _good_entries()
        entries["a/broken.png"] = b"\x89PNG garbage"
        from_zip(_zip(entries), image_size=8)
    with pytest.raises(ValueError, match="inside class folders"):
        entries = _good_entries()
        entries["loose.png"] = _png_bytes()
        from_zip(_zip(entries), image_size=8)


# --------------------------------------------------------------------------- hostile zips and folders
def _zip_with(extra: list[tuple[zipfile.ZipInfo | str, bytes]], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in _good_entries().items():
            z.writestr(name, data)
        for info, data in extra:
            z.writestr(info, data)
    return buf.getvalue()


def _symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([("a/" + "x" * 300 + ".png", b"")], r"name part of 304 characters; the limit is 255 bytes"),
        ([("a/" + "d" * 300 + "/1.png", b"")], r"name part of 300 characters"),
        ([("a/" + "d/" * 1000 + "1.png", b"")], r"2007-character name; the limit is 1024"),
        ([("a/" + "d/" * 100 + "1.png", b"")], r"nested 101 folders deep; the limit is 34"),
        ([_symlink_entry("a/link.png", "/etc/passwd")], r"'a/link.png' is a symbolic link"),
        ([_symlink_entry("a/sub", "/etc")], r"'a/sub' is a symbolic link"),
        ([("a/x.png", b""), ("a/x.png/1.png", b"")], r"'a/x.png/1.png' cannot be extracted"),
    ],
)
def test_hostile_zip_members_are_value_errors(extra, match):
    extra = [(name, data or _png_bytes()) for name, data in extra]
    with pytest.raises(ValueError, match=match):
        from_zip(_zip_with(extra), image_size=8)


def _patched(blob: bytes, patch) -> bytes:
    raw = bytearray(blob)
    patch(raw)
    return bytes(raw)


def test_damaged_zips_are_value_errors():
    good = _zip_with([])

    def flip_png_data(raw):  # a stored PNG whose bytes no longer match the CRC in the header
        raw[raw.find(b"IDAT") + 6] ^= 0xFF

    def unknown_method(raw):  # compression method 99 (AES) in the first local and central header
        raw[raw.find(b"PK\x03\x04") + 8] = 99
        raw[raw.find(b"PK\x01\x02") + 10] = 99

    def encrypted(raw):
        raw[raw.find(b"PK\x01\x02") + 8] |= 1

    with pytest.raises(ValueError, match=r"'a/0.png' cannot be extracted \(BadZipFile: Bad CRC-32"):
        from_zip(_patched(good, flip_png_data), image_size=8)
    with pytest.raises(ValueError, match=r"cannot be extracted \(NotImplementedError"):
        from_zip(_patched(good, unknown_method), image_size=8)
    with pytest.raises(ValueError, match="is encrypted; upload a zip without a password"):
        from_zip(_patched(good, encrypted), image_size=8)
    deflated = _zip_with([], zipfile.ZIP_DEFLATED)
    for cut in (len(deflated) // 3, len(deflated) - 10):
        with pytest.raises(ValueError, match="not a readable zip"):
            from_zip(deflated[:cut], image_size=8)


def test_zip_arguments_of_the_wrong_type_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="a zip is a path, bytes or a binary file object, got int"):
        from_zip(5, image_size=8)
    with pytest.raises(ValueError, match="cannot be opened"):
        from_zip("x" * 5000, image_size=8)
    (tmp_path / "t.zip").write_text("text")
    with open(tmp_path / "t.zip") as text_mode, pytest.raises(ValueError, match="not a readable zip"):
        from_zip(text_mode, image_size=8)
    with pytest.raises(ValueError, match=r"unknown options \['bogus'\]"):
        from_zip(_zip_with([]), image_size=8, bogus=1)
    with pytest.raises(ValueError, match="seed='x' must be a non-negative integer"):
        from_zip(_zip_with([]), image_size=8, seed="x")


def test_image_folder_refuses_bad_arguments_and_deep_or_broken_trees(tmp_path):
    with pytest.raises(ValueError, match="root must be a folder path, got NoneType"):
        from_image_folder(None, 8)
    with pytest.raises(ValueError, match="could not be read"):
        from_image_folder("x" * 5000, 8)
    with pytest.raises(ValueError, match="val_fraction='half'"):
        from_image_folder(tmp_path, 8, val_fraction="half")
    for cls in ("a", "b"):
        for i in range(2):
            _png(tmp_path / "data" / cls / f"{i}.png", (10, 200, 10))
    chain = [tmp_path / "data" / "a" / "d"]
    for _ in range(999):  # a RecursionError for a recursive walk (and for mkdir(parents=True) or rmtree)
        chain.append(chain[-1] / "d")
    try:
        for folder in chain:
            folder.mkdir()
        Image.new("RGB", (4, 4)).save(chain[-1] / "x.png")
        with pytest.raises(ValueError, match="nested more than 32 deep"):
            from_image_folder(tmp_path / "data", 8)
    finally:
        (chain[-1] / "x.png").unlink(missing_ok=True)
        for folder in reversed(chain):
            if folder.exists():
                folder.rmdir()
    (tmp_path / "data" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    data = from_image_folder(tmp_path / "data", 8, augment=False, val_fraction=0.5)
    split = next(s for s in ("train", "val") if any(p.name == "broken.png" for p, _ in data.datasets[s].samples))
    broken = next(i for i, (p, _) in enumerate(data.datasets[split].samples) if p.name == "broken.png")
    with pytest.raises(ValueError, match=r"broken\.png is not a readable image"):
        data.datasets[split][broken]


def test_links_out_of_a_confined_folder_are_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for cls in ("a", "b"):
        for i in range(2):
            _png(root / "data" / cls / f"{i}.png", (200, 0, 0))
    _png(outside / "secret" / "0.png", (0, 0, 0))
    _png(outside / "secret" / "1.png", (0, 0, 0))
    (root / "data" / "linked").symlink_to(outside / "secret", target_is_directory=True)
    # a plain library call may follow links (the caller owns the folder)...
    assert from_image_folder(root / "data", 8).class_names == ["a", "b", "linked"]
    # ...but not when confined to a root
    with pytest.raises(ValueError, match=r"class folder .*linked.* is a link to a place outside"):
        from_image_folder(root / "data", 8, confine_to=root)
    (root / "data" / "linked").unlink()
    (root / "data" / "a" / "stolen.png").symlink_to(outside / "secret" / "0.png")
    with pytest.raises(ValueError, match=r"image .*stolen\.png.* is a link to a file outside"):
        from_image_folder(root / "data", 8, confine_to=root)
    (root / "data" / "a" / "inside.png").symlink_to(root / "data" / "b" / "0.png")  # links inside are fine
    (root / "data" / "a" / "stolen.png").unlink()
    data = from_image_folder(root / "data", 8, confine_to=root)
    assert data.dataset_sizes["train"] + data.dataset_sizes["val"] == 5


def test_hidden_folders_above_the_root_do_not_hide_the_images(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            _png(tmp_path / ".cache" / "data" / cls / f"{i}.png", (0, 0, 200))
    data = from_image_folder(tmp_path / ".cache" / "data", 8)
    assert data.dataset_sizes["train"] + data.dataset_sizes["val"] == 4


def test_grey_normalization_reads_grey_images(tmp_path):
    for cls, colour in (("r", (255, 0, 0)), ("g", (0, 255, 0))):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", colour)
    data = from_image_folder(tmp_path, 8, normalization=((0.5,), (0.25,)), augment=True)
    x, y = data.datasets["val"][0]
    assert x.shape == (1, 8, 8)
    luma = {0: 150 / 255, 1: 76 / 255}[y]  # PIL's L = 0.299 R + 0.587 G + 0.114 B ("g" is label 0)
    torch.testing.assert_close(x, torch.full((1, 8, 8), (luma - 0.5) / 0.25), atol=0.02, rtol=0)
    assert data.datasets["train"][0][0].shape == (1, 8, 8)  # the augmenting transform too
    with pytest.raises(ValueError, match="RGB \\(3 values\\) or grey \\(1 value\\)"):
        from_image_folder(tmp_path, 8, normalization=((0.5, 0.5), (0.5, 0.5)))
    with pytest.raises(ValueError, match="finite value per channel and std > 0"):
        from_image_folder(tmp_path, 8, normalization=((0.5,), (float("nan"),)))


def test_shapes_render_is_kept_in_a_cache_folder_and_read_back(tmp_path, monkeypatch):
    from vitcore.data.shapes import ShapesDataset

    first = ShapesDataset(12, 24, seed=3, cache_dir=tmp_path)
    path = first.cache_path(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    def no_drawing(self, index):
        raise AssertionError("a stored render was drawn again")

    monkeypatch.setattr(ShapesDataset, "_render", no_drawing)
    again = ShapesDataset(12, 24, seed=3, cache_dir=tmp_path, augment=True)  # augmenting draws the same images
    assert torch.equal(again.images, first.images) and torch.equal(again.masks, first.masks)
    assert torch.equal(again.tensors, first.tensors) and torch.equal(again.targets, first.targets)
    with pytest.raises(AssertionError, match="drawn again"):  # other settings: not stored yet
        ShapesDataset(12, 24, seed=4, cache_dir=tmp_path)
    monkeypatch.undo()
    assert ShapesDataset(12, 24, seed=4).cache_path(tmp_path) != path  # another file
    path.write_bytes(b"not an npz")  # a damaged file is drawn again and replaced
    redrawn = ShapesDataset(12, 24, seed=3, cache_dir=tmp_path)
    assert torch.equal(redrawn.images, first.images)
    assert torch.equal(ShapesDataset(12, 24, seed=3, cache_dir=tmp_path).images, first.images)

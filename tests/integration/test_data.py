"""The dataset layer: sources and their layouts, the decoded cache and its corruption, clear errors, seeded
subsets and splits, batched augmentation and normalisation, and PNG sizes."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import (
    ImageData,
    augment_batch,
    iterate_batches,
    load_data,
    mean_png_bits,
    normalize,
    png_bits,
    subset,
    train_val_split,
)
from engine.data import cache as cache_mod
from engine.data import decode as decode_mod
from engine.data import load as load_mod
from engine.data import png as png_mod
from engine.errors import DataNotFoundError, UserError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_folder(root: Path, classes: tuple[str, ...] = ("b_two", "a_one", "c_three"), size: tuple[int, int] = (28, 28),
                 mode: str = "L", n_train: int = 4, n_test: int = 2, seed: int = 0,
                 ext: str = "png") -> dict[str, list[np.ndarray]]:
    """An ImageFolder of random images under root/train and root/test; returns the arrays written (PNG: exactly
    the pixels; JPEG: before compression), per split."""
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    written: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in sorted(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(arr[:, :, 0] if channels == 1 else arr).save(root / split / cls / f"{i:03d}.{ext}")
                written[split].append(arr.transpose(2, 0, 1))
    return written


def make_tar(src: Path, dest: Path, arcname: str | None = None) -> Path:
    with tarfile.open(dest, "w:gz" if dest.name.endswith("gz") else "w") as tf:
        if arcname is None:
            for child in sorted(src.iterdir()):
                tf.add(child, arcname=child.name)
        else:
            tf.add(src, arcname=arcname)
    return dest


def write_cifar_root(root: Path, per_batch: int = 6) -> Path:
    """A miniature CIFAR-10 root (pickled batches as torchvision reads them)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    return base


def id_data(n_train: int = 600, n_test: int = 100, classes: int = 3) -> ImageData:
    """Synthetic data whose every image carries its index in its first two pixels."""
    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
        idx = torch.arange(n)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
        return x, idx % classes

    return ImageData("ids", [f"c{i}" for i in range(classes)], *make(n_train), *make(n_test), "f00d", "synthetic")


def ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


# --------------------------------------------------------------------------------------------- the CIFAR archive


def test_cifar_tar_loads(cifar: ImageData, shared_tar: Path) -> None:
    assert cifar.train_x.shape == (50_000, 3, 32, 32) and cifar.test_x.shape == (10_000, 3, 32, 32)
    assert cifar.train_x.dtype == torch.uint8 and cifar.train_y.dtype == torch.int64
    assert cifar.classes == CIFAR_CLASSES and cifar.num_classes == 10
    assert cifar.channels == 3 and cifar.image_size == (32, 32)
    assert torch.bincount(cifar.train_y).tolist() == [5000] * 10
    assert torch.bincount(cifar.test_y).tolist() == [1000] * 10
    assert cifar.fingerprint == hashlib.sha256(shared_tar.read_bytes()).hexdigest()[:16]
    assert cifar.name == "cifar10-jpeg" and "cifar10-jpeg.tar.gz" in cifar.source
    assert torch.allclose(cifar.mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01)
    assert torch.allclose(cifar.std, torch.tensor([0.247, 0.243, 0.261]), atol=0.01)
    with tarfile.open(shared_tar, "r|gz") as tf:
        member = next(m for m in tf if m.isfile())
        assert member.name == "train/airplane/0000.jpg"
        with Image.open(io.BytesIO(tf.extractfile(member).read())) as im:
            first = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(cifar.train_x[0], first)


def test_second_load_hits_cache(cifar: ImageData, shared_tar: Path, tmp_cache: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cache_mod, "decode_source", no_decoding)
    again = load_data(shared_tar, cache_dir=tmp_cache)
    assert again.fingerprint == cifar.fingerprint and again.classes == cifar.classes
    assert torch.equal(again.train_x, cifar.train_x) and torch.equal(again.test_y, cifar.test_y)
    monkeypatch.delenv("COINFER_DATA", raising=False)
    found = load_data(None, download=False)  # $COINFER_CACHE is tmp_cache: the decoded dataset under cache/data
    assert found.fingerprint == cifar.fingerprint and torch.equal(found.test_x, cifar.test_x)


# --------------------------------------------------------------------------------------------- layouts


def test_grayscale_folder_and_its_tar(tmp_path: Path) -> None:
    written = write_folder(tmp_path / "digits", size=(28, 24))
    folder = load_data(tmp_path / "digits", cache_dir=tmp_path / "cache")
    assert folder.channels == 1 and folder.image_size == (24, 28)
    assert folder.classes == ["a_one", "b_two", "c_three"]
    assert folder.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and folder.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(folder.train_x, torch.from_numpy(np.stack(written["train"])))
    assert torch.equal(folder.test_x, torch.from_numpy(np.stack(written["test"])))
    for archive, arcname in (("digits.tar.gz", "digits"), ("flat.tar", None), ("x.tgz", "digits")):
        tar = load_data(make_tar(tmp_path / "digits", tmp_path / archive, arcname), cache_dir=tmp_path / "cache")
        assert tar.classes == folder.classes and tar.channels == 1 and tar.image_size == (24, 28)
        assert torch.equal(tar.train_x, folder.train_x) and torch.equal(tar.test_y, folder.test_y)
        assert tar.fingerprint != folder.fingerprint


def test_rgb_folder_and_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "rgb", size=(16, 16), mode="RGB", classes=("x", "y"))
    monkeypatch.setenv("COINFER_DATA", str(tmp_path / "rgb"))
    data = load_data(cache_dir=tmp_path / "cache")
    assert data.channels == 3 and data.image_size == (16, 16) and data.classes == ["x", "y"]
    write_folder(tmp_path / "other", size=(8, 8), classes=("p", "q"))
    assert load_data(tmp_path / "other", cache_dir=tmp_path / "cache").image_size == (8, 8)  # --data wins


def test_cifar_root_its_tar_and_cache_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = write_cifar_root(tmp_path / "raw")
    for path in (tmp_path / "raw", base):
        data = load_data(path, cache_dir=tmp_path / "c1")
        assert data.classes == CIFAR_CLASSES and data.train_x.shape == (30, 3, 32, 32) and len(data.test_y) == 6
    tar = load_data(make_tar(base, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py"),
                    cache_dir=tmp_path / "c2")
    assert torch.equal(tar.train_x, data.train_x) and torch.equal(tar.train_y, data.train_y)
    monkeypatch.delenv("COINFER_DATA", raising=False)
    write_cifar_root(tmp_path / "c3" / "data")  # what torchvision's download leaves in <cache>/data/
    found = load_data(cache_dir=tmp_path / "c3", download=False)
    assert found.fingerprint == data.fingerprint and found.name == "cifar10"


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as the CIFAR-10 python batches were written."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """`obj` pickled the way Python 2 cPickle wrote CIFAR-10: protocol 2, byte-string keys, numpy.core paths."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_py2_cifar_tar(root: Path, meta: bytes | None = None, batch_1: bytes | None = None) -> tuple[Path, dict]:
    """A CIFAR-10 tar.gz of Python 2 style batches; `meta` / `batch_1` replace those files. Returns the tar and the
    arrays written."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (2, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, 2)]
        written[name] = (data, labels)
        batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data,
                 b"filenames": [b"a_cat_01.png", b"b_dog_02.png"]}
        (base / name).write_bytes(batch_1 if name == "data_batch_1" and batch_1 else py2_pickle(batch))
    (base / "batches.meta").write_bytes(meta or py2_pickle(
        {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": 2, b"num_vis": 3072}))
    return make_tar(base, root / "cifar-10-python.tar.gz", "cifar-10-batches-py"), written


def test_python2_cifar_batches_load(tmp_path: Path) -> None:
    meta = py2_pickle({b"label_names": [c.encode() for c in CIFAR_CLASSES]})
    assert meta[:2] == b"\x80\x02" and b"U\x0blabel_names" in meta  # protocol 2, a Python 2 str key
    tar, written = write_py2_cifar_tar(tmp_path)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in (tmp_path / "cifar-10-batches-py/test_batch").read_bytes()
    data = load_data(tar, cache_dir=tmp_path / "cache")
    assert data.classes == CIFAR_CLASSES and data.train_x.shape == (10, 3, 32, 32)
    assert np.array_equal(data.test_x.numpy().reshape(2, 3072), written["test_batch"][0])
    assert data.train_y[:2].tolist() == written["data_batch_1"][1]


def test_jpeg_folder_matches_pil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEGs take a fast path (PIL's decoder without Image.open); it must give Image.open's pixels."""
    monkeypatch.setattr(decode_mod, "_worker_count", lambda n: 2)
    for mode in ("RGB", "L"):
        root = tmp_path / mode
        write_folder(root, size=(20, 12), mode=mode, ext="jpg", n_train=3)
        if mode == "RGB":  # another frame header: the general path, converted to RGB
            Image.new("CMYK", (20, 12), (10, 200, 30, 0)).save(root / "train" / "b_two" / "cmyk.jpg")
        data = load_data(root, cache_dir=tmp_path / "cache")
        assert data.image_size == (12, 20) and data.channels == (3 if mode == "RGB" else 1)
        files = sorted((root / "train").rglob("*.jpg"))
        assert len(files) == len(data.train_y) == (10 if mode == "RGB" else 9)
        for file, img in zip(files, data.train_x, strict=True):
            with Image.open(file) as im:
                expected = np.array(im.convert(mode)).reshape(12, 20, -1).transpose(2, 0, 1)
            assert torch.equal(img, torch.from_numpy(expected)), file.name


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("odd", ["size", "mode"])
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_mixed_images_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd: str, workers: int,
                            ext: str) -> None:
    monkeypatch.setattr(decode_mod, "_worker_count", lambda n: workers)
    write_folder(tmp_path / "mixed", size=(28, 28), mode="RGB", ext=ext)
    odd_img = Image.new("RGB", (30, 28)) if odd == "size" else Image.new("L", (28, 28))
    odd_img.save(tmp_path / "mixed" / "test" / "c_three" / f"zzz.{ext}")
    with pytest.raises(UserError, match=f"size or mode.*zzz.{ext}") as info:
        load_data(tmp_path / "mixed", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_unrecognised_paths_raise_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "garbage.tar.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    write_folder(tmp_path / "good")
    good = make_tar(tmp_path / "good", tmp_path / "good.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    make_tar(tmp_path / "notes.txt", tmp_path / "notrain.tar", "notes.txt")
    for name in ("empty", "notes.txt", "garbage.tar.gz", "cut.tar.gz", "notrain.tar", "missing"):
        with pytest.raises(UserError, match="expected") as info:
            load_data(tmp_path / name, cache_dir=tmp_path / "cache")
        assert not isinstance(info.value, DataNotFoundError) and "\n" not in str(info.value)
    monkeypatch.setenv("COINFER_DATA", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="COINFER_DATA"):
        load_data(cache_dir=tmp_path / "cache")


def test_no_data_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_DATA", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError) as info:
        load_data(cache_dir=cache, download=False)
    message = str(info.value)
    assert "--data" in message and "COINFER_DATA" in message and "cache/data" in message and "\n" not in message

    def offline(data_dir: Path) -> Path:
        raise OSError("network is unreachable")

    monkeypatch.setattr(load_mod, "_download_cifar", offline)
    with pytest.raises(DataNotFoundError, match="download failed: network is unreachable"):
        load_data(cache_dir=cache)


def test_download_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_DATA", raising=False)
    monkeypatch.setattr(load_mod, "CIFAR_URL_HOST", "cifar.invalid")  # never resolves, online or not
    monkeypatch.setattr(load_mod, "DOWNLOAD_TIMEOUT_S", 2.0)
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match="download failed"):
        load_data(cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong contents"])
def test_corrupt_cache_is_redone(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    write_folder(tmp_path / "ds")
    first = load_data(tmp_path / "ds", cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache" / "data").glob("dataset-*.pt")
    blob = cached.read_bytes()
    if damage == "truncate":
        cached.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        cached.write_bytes(b"\0" * 1000)
    else:
        obj = torch.load(cached, weights_only=True)
        obj["train_y"] = obj["train_y"][:-1]
        torch.save(obj, cached)
    with caplog.at_level(logging.WARNING, logger="engine.data"):
        again = load_data(tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.train_y, first.train_y)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "\n" not in warnings[0]
    assert cache_mod._load_decoded(cached, first.fingerprint).fingerprint == first.fingerprint  # rewritten, valid
    assert not list((tmp_path / "cache" / "data").glob(".*.tmp"))


def test_changed_folder_gets_a_new_fingerprint(tmp_path: Path) -> None:
    write_folder(tmp_path / "ds")
    before = load_data(tmp_path / "ds", cache_dir=tmp_path / "cache")
    Image.new("L", (28, 28), 7).save(tmp_path / "ds" / "train" / "a_one" / "new.png")
    after = load_data(tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert after.fingerprint != before.fingerprint and len(after.train_y) == len(before.train_y) + 1


# --------------------------------------------------------------------------------------------- subsets and splits


def test_subset_is_seeded_stratified_and_fingerprinted(cifar: ImageData, small_data: ImageData) -> None:
    assert len(small_data.train_y) == 1200 and len(small_data.test_y) == 400
    assert torch.bincount(small_data.train_y).tolist() == [120] * 10
    assert torch.bincount(small_data.test_y).tolist() == [40] * 10
    again = subset(cifar, 1200, 400, seed=0)
    assert torch.equal(again.train_x, small_data.train_x) and again.fingerprint == small_data.fingerprint
    other = subset(cifar, 1200, 400, seed=1)
    assert not torch.equal(other.train_x, small_data.train_x)
    fingerprints = {cifar.fingerprint, small_data.fingerprint, other.fingerprint, subset(cifar, 1000, 400).fingerprint}
    assert len(fingerprints) == 4 and small_data.fingerprint.startswith(cifar.fingerprint)
    assert subset(cifar, None, None) is cifar
    assert small_data.classes == cifar.classes and small_data.image_size == (32, 32)
    data = id_data()
    part = subset(data, 90, None, seed=3)
    picked = ids(part.train_x)
    assert len(set(picked)) == 90 and all(data.train_y[i] == y for i, y in zip(picked, part.train_y.tolist(),
                                                                               strict=True))
    assert torch.equal(part.test_x, data.test_x)


def test_train_val_split_is_seeded_disjoint_and_stratified() -> None:
    data = id_data(n_train=600)
    tx, ty, vx, vy = train_val_split(data, 0.1, seed=0)
    assert len(vx) == 60 and len(tx) == 540 and torch.bincount(vy).tolist() == [20, 20, 20]
    train_ids, val_ids = ids(tx), ids(vx)
    assert not set(train_ids) & set(val_ids) and sorted(train_ids + val_ids) == list(range(600))
    assert ty.tolist() == [i % 3 for i in train_ids] and vy.tolist() == [i % 3 for i in val_ids]
    assert train_ids[:10] != sorted(train_ids[:10])  # shuffled: any prefix is a fair sample
    same = train_val_split(data, 0.1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(same, (tx, ty, vx, vy), strict=True))
    assert set(ids(train_val_split(data, 0.1, seed=1)[2])) != set(val_ids)
    with pytest.raises(UserError):
        train_val_split(data, 1.0, seed=0)


def test_iterate_batches() -> None:
    x, y = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8), torch.arange(10)
    ordered = list(iterate_batches(x, y, 4, shuffle=False))
    assert [len(b) for b, _ in ordered] == [4, 4, 2] and ordered[0][0].data_ptr() == x.data_ptr()  # views
    shuffled = list(iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    seen = torch.cat([b.flatten().long() for b, _ in shuffled])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert torch.equal(torch.cat([b for _, b in shuffled]), seen)
    again = list(iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, again, strict=True))
    assert [len(b) for b, _ in iterate_batches(x, y, 4, shuffle=True, generator=None, drop_last=True)] == [4, 4]


# --------------------------------------------------------------------------------------------- augmentation


def all_crops(img: torch.Tensor, pad: int = 4) -> list[torch.Tensor]:
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad : pad + h, pad : pad + w] = img
    crops = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_augment_batch_crops_and_flips(small_data: ImageData) -> None:
    x = small_data.train_x[:64]
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1)))
    matches = [[i for i, crop in enumerate(all_crops(img)) if torch.equal(crop, o)] for img, o in zip(x, out,
                                                                                                      strict=True)]
    assert all(matches), "every output is a padded crop, maybe flipped, of its input"
    kinds = {m[0] for m in matches}
    assert any(k >= 81 for k in kinds) and any(k < 81 for k in kinds) and len(kinds) > 10


def test_augment_batch_shift_and_flip_exactly() -> None:
    img = torch.arange(1, 65, dtype=torch.uint8).view(1, 1, 8, 8)  # non-zero, so padding shows as 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        state = gen.get_state()
        r = int(torch.randint(0, 162, (1,), generator=gen))
        gen.set_state(state)
        flip, dx, dy = r % 2, (r // 2) % 9, r // 18
        out = augment_batch(img, gen)[0, 0]
        padded = torch.nn.functional.pad(img[0, 0], (4, 4, 4, 4))
        expected = padded[dy : dy + 8, dx : dx + 8]
        assert torch.equal(out, expected.flip(-1) if flip else expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_and_normalize_on_cuda(small_data: ImageData) -> None:
    x = small_data.train_x[:256]
    cpu = augment_batch(x, torch.Generator().manual_seed(0))
    gpu = augment_batch(x.cuda(), torch.Generator().manual_seed(0))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    gpu_gen = torch.Generator(device="cuda").manual_seed(0)
    assert augment_batch(x.cuda(), gpu_gen).shape == x.shape
    xb, _ = next(iterate_batches(x.cuda(), small_data.train_y[:256].cuda(), 64, shuffle=True, generator=gpu_gen))
    assert xb.is_cuda and len(xb) == 64
    mean, std = small_data.mean.cuda(), small_data.std.cuda()
    assert torch.allclose(normalize(x.cuda(), mean, std).cpu(), normalize(x, small_data.mean, small_data.std))


def test_normalize_gives_zero_mean_unit_std(small_data: ImageData) -> None:
    z = normalize(small_data.train_x, small_data.mean, small_data.std)
    assert z.dtype == torch.float32 and z.shape == small_data.train_x.shape
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    direct = small_data.train_x.double().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(small_data.mean.double(), direct, atol=1e-6)
    assert torch.allclose(normalize(small_data.train_x[:2], [0.5] * 3, [0.5] * 3),
                          small_data.train_x[:2].float() / 127.5 - 1, atol=1e-6)


# --------------------------------------------------------------------------------------------- PNG sizes


def test_png_bits_are_lossless_sizes(small_data: ImageData) -> None:
    for images in (small_data.test_x[:20], torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)):
        bits = png_bits(images)
        assert bits.shape == (len(images),) and (bits > 0).all()
        for img, b in zip(images, bits, strict=True):
            encoded = png_mod._png_bytes(img.permute(1, 2, 0).numpy())
            assert 8 * len(encoded) == b
            with Image.open(io.BytesIO(encoded)) as im:
                back = torch.from_numpy(np.array(im)).reshape(img.shape[1], img.shape[2], -1).permute(2, 0, 1)
            assert torch.equal(back, img)


def test_mean_png_bits_is_cached(small_data: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    value = mean_png_bits(small_data, tmp_path)
    assert value == pytest.approx(float(png_bits(small_data.test_x).mean()))
    assert 8_000 < value < 30_000  # 32x32x3 JPEG-decoded photos: well under the raw 24,576 bits, mostly
    real = png_mod.png_bits
    monkeypatch.setattr(png_mod, "png_bits", lambda images: pytest.fail("recomputed a cached value"))
    assert mean_png_bits(small_data, tmp_path) == value
    (path,) = (tmp_path / "data").glob("png-*.json")
    path.write_text("{not json")
    monkeypatch.setattr(png_mod, "png_bits", real)
    with caplog.at_level(logging.WARNING, logger="engine.data"):
        assert mean_png_bits(small_data, tmp_path) == value
    assert any("corrupt" in r.getMessage() for r in caplog.records)

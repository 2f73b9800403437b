"""Vision data: digits, CIFAR-100 pickles and hub parquet written in the published layouts, synthetic set, splits."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from harness.benchmarks.vision import cifar
from harness.benchmarks.vision.data import (
    SPLITS,
    ImageDataset,
    ImageSplit,
    class_deletion_splits,
    digits_dataset,
    resolve_classes,
    subsample_per_class,
)
from harness.benchmarks.vision.sources import load_image_dataset
from harness.benchmarks.vision.synth import SyntheticCifarSpec, ensure_synthetic, generate_cifar100, write_cifar100
from harness.commands.data import synth_command
from harness.core.errors import DataError

NAMES = ("apple", "bear", "castle")


def sample_images(n_per_class: int, n_classes: int = len(NAMES), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 32x32 RGB uint8 images with labels 0..n_classes-1 interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(n_classes), n_per_class)
    return rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8), labels


def _batch(images: np.ndarray, labels: np.ndarray, batch_label: bytes) -> dict:
    # published row layout: all 1024 red values (row-major), then green, then blue
    rows = np.stack([np.concatenate([im[:, :, c].reshape(-1) for c in range(3)]) for im in images])
    return {b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))], b"batch_label": batch_label,
            b"fine_labels": [int(x) for x in labels], b"coarse_labels": [0] * len(labels), b"data": rows}


def write_pickles(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  names: tuple[str, ...] = NAMES) -> Path:
    """`root/cifar-100-python/{train,test,meta}` as the published archive unpacks; returns that directory."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    files = {"train": _batch(*train, b"training batch 1 of 1"), "test": _batch(*test, b"testing batch 1 of 1"),
             "meta": {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"all"]}}
    for name, obj in files.items():
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
    return d


def png(image: np.ndarray) -> bytes:
    """PNG encoding of one uint8 RGB image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_hub_parquet(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                      names: tuple[str, ...] = NAMES) -> Path:
    """`root/cifar100/{train,test}-00000-of-00001.parquet` written by `datasets`, as the hub's conversion did."""
    import datasets

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=list(names)),
                                  "coarse_label": datasets.ClassLabel(names=["all"])})
    for split, (images, labels) in (("train", train), ("test", test)):
        ds = datasets.Dataset.from_dict({"img": [{"bytes": png(im), "path": None} for im in images],
                                         "fine_label": [int(x) for x in labels],
                                         "coarse_label": [0] * len(labels)}, features=features)
        (root / "cifar100").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "cifar100" / f"{split}-00000-of-00001.parquet"))
    return root


TRAIN, TEST = sample_images(4), sample_images(2, seed=1)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return digits_dataset(0.2, seed=0)


def test_digits_are_the_bundled_images_scaled_to_uint8(digits: ImageDataset) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert digits.train.images.shape == (1437, 8, 8, 3) and digits.test.images.shape == (360, 8, 8, 3)
    assert digits.class_names == tuple(str(i) for i in range(10))
    ids = np.concatenate([digits.train.ids, digits.test.ids])
    assert sorted(ids) == list(range(1797))
    for split in (digits.train, digits.test):
        assert split.images.dtype == np.uint8
        assert (split.images[..., 0] == split.images[..., 2]).all()  # grey replicated to 3 channels
        np.testing.assert_array_equal(split.images[..., 1], np.rint(raw.images[split.ids] * 255 / 16))
        np.testing.assert_array_equal(split.labels, raw.target[split.ids])
    assert digits.train.images.max() == 255 and digits.train.images.min() == 0


def test_digits_split_is_stratified_and_seeded(digits: ImageDataset) -> None:
    counts = np.bincount(digits.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class's ~180 images
    assert np.array_equal(digits_dataset(0.2, seed=0).test.ids, digits.test.ids)
    assert not np.array_equal(digits_dataset(0.2, seed=1).test.ids, digits.test.ids)
    assert len(digits_dataset(0.5, seed=0).test) == 899
    with pytest.raises(DataError, match="test_fraction"):
        digits_dataset(1.0)


def test_cifar_pickles_in_published_layout(tmp_path: Path) -> None:
    d = write_pickles(tmp_path, TRAIN, TEST)
    for source in (d, tmp_path):  # the cifar-100-python directory itself or its parent
        data = cifar.read_cifar100_pickles(source)
        np.testing.assert_array_equal(data.train.images, TRAIN[0])
        np.testing.assert_array_equal(data.train.labels, TRAIN[1])
        np.testing.assert_array_equal(data.test.images, TEST[0])
        assert data.class_names == NAMES and data.files["meta"] == str(d / "meta")
    assert load_image_dataset(str(tmp_path), tmp_path).class_names == NAMES


def test_cifar_pickle_channel_order(tmp_path: Path) -> None:
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, :, :, 0], image[0, 0, 1, 1], image[0, 31, 0, 2] = 10, 200, 99  # R plane, one G and one B pixel
    d = write_pickles(tmp_path, (image, np.array([0])), (image, np.array([1])))
    row = pickle.loads((d / "train").read_bytes())[b"data"][0]
    assert row[0] == 10 and row[1024 + 1] == 200 and row[2048 + 31 * 32] == 99
    np.testing.assert_array_equal(cifar.read_cifar100_pickles(d).train.images, image)


def test_missing_or_bad_pickle_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    d = write_pickles(tmp_path, TRAIN, TEST)
    (d / "test").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python/test not found"):
        cifar.read_cifar100_pickles(d)
    (d / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"cifar-100-python/test is not a CIFAR-100 pickle"):
        cifar.read_cifar100_pickles(d)
    (d / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\) uint8"):
        cifar.read_cifar100_pickles(d)


def test_pickle_with_foreign_globals_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    d = write_pickles(tmp_path, TRAIN, TEST)
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": Evil()}))
    with pytest.raises(DataError, match="not allowed"):
        cifar.read_cifar100_pickles(d)
    assert not marker.exists()


def test_hub_parquet_layout(tmp_path: Path) -> None:
    write_hub_parquet(tmp_path, TRAIN, TEST)
    data = cifar.read_hub_parquet_dir(tmp_path)
    np.testing.assert_array_equal(data.train.images, TRAIN[0])  # PNG is lossless
    np.testing.assert_array_equal(data.test.labels, TEST[1])
    assert data.class_names == NAMES  # from the datasets Features stored in the parquet schema
    assert data.files["train"].endswith("cifar100/train-00000-of-00001.parquet")
    assert load_image_dataset(str(tmp_path), tmp_path).class_names == NAMES


def test_hub_parquet_without_metadata_uses_cifar100_names(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, (images, labels) in (("train", TRAIN), ("test", TEST)):
        table = pa.table({"img": [{"bytes": png(im), "path": None} for im in images], "fine_label": labels})
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    data = cifar.read_hub_parquet_dir(tmp_path)
    assert data.class_names == cifar.FINE_LABELS and len(data.train) == len(TRAIN[1])
    with pytest.raises(DataError, match="no column 'label'"):
        cifar.read_hub_parquet_dir(tmp_path, label_column="label")


def _fake_hub_cache(cache: Path, source: Path) -> None:
    repo = cache / "datasets--uoft-cs--cifar100"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / "cifar100"
    snapshot.mkdir(parents=True)
    for f in (source / "cifar100").glob("*.parquet"):
        (snapshot / f.name).write_bytes(f.read_bytes())


def test_hub_id_reads_the_local_hub_cache(tmp_path: Path) -> None:
    write_hub_parquet(tmp_path / "src", TRAIN, TEST)
    _fake_hub_cache(tmp_path / "hub", tmp_path / "src")
    data = cifar.load_hub_dataset("uoft-cs/cifar100", cache_dir=str(tmp_path / "hub"))
    np.testing.assert_array_equal(data.train.images, TRAIN[0])
    assert data.source == "uoft-cs/cifar100" and data.class_names == NAMES


def test_hub_id_not_in_cache_is_a_clear_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'uoft-cs/cifar100' is not in the local Hugging Face cache"):
        cifar.load_hub_dataset("uoft-cs/cifar100", cache_dir=str(tmp_path / "hub"),
                               datasets_cache_dir=str(tmp_path / "ds"))


def test_dataset_dict_conversion() -> None:
    import datasets

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=list(NAMES))})
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"img": [{"bytes": png(im), "path": None} for im in images],
                                           "fine_label": [int(x) for x in labels]}, features=features)
        for split, (images, labels) in (("train", TRAIN), ("test", TEST))})
    data = cifar._from_dataset_dict(dd, "uoft-cs/cifar100", "fine_label")
    np.testing.assert_array_equal(data.test.images, TEST[0])
    assert data.class_names == NAMES


def test_unknown_source_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither the cifar-100-python pickles"):
        load_image_dataset(str(tmp_path), tmp_path)
    with pytest.raises(DataError, match="expected 'digits', 'synthetic'"):
        load_image_dataset("no such thing", tmp_path)


def test_synthetic_set_is_published_layout_seeded_and_learnable(tmp_path: Path) -> None:
    spec = SyntheticCifarSpec(n_classes=10, train_per_class=6, test_per_class=3)
    a, b = generate_cifar100(spec, 0), generate_cifar100(spec, 0)
    assert np.array_equal(a["train"][b"data"], b["train"][b"data"])
    assert not np.array_equal(generate_cifar100(spec, 1)["train"][b"data"], a["train"][b"data"])
    d = write_cifar100(a, tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["meta", "test", "train"] and d.name == "cifar-100-python"
    train = pickle.load((d / "train").open("rb"), encoding="bytes")
    assert set(train) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert train[b"data"].shape == (60, 3072) and train[b"data"].dtype == np.uint8
    data = cifar.read_cifar100_pickles(tmp_path)
    assert data.class_names == cifar.FINE_LABELS[:10] and np.bincount(data.test.labels).tolist() == [3] * 10
    # learnable: the nearest class mean of the training images classifies the test images
    x_train, x_test = data.train.images.reshape(60, -1) / 255.0, data.test.images.reshape(30, -1) / 255.0
    means = np.stack([x_train[data.train.labels == c].mean(0) for c in range(10)])
    pred = ((x_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == data.test.labels).mean() >= 0.9


def test_synthetic_source_is_cached(tmp_path: Path) -> None:
    first = ensure_synthetic(tmp_path, SyntheticCifarSpec(), 0)
    stamp = (first / "train").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, SyntheticCifarSpec(), 0) == first
    assert (first / "train").stat().st_mtime_ns == stamp
    data = load_image_dataset("synthetic", tmp_path, seed=0)
    assert data.num_classes == 100 and len(data.train) == 500 and data.image_shape == (32, 32)


def test_synth_command_writes_cifar100(tmp_path: Path) -> None:
    out = synth_command("cifar100", str(tmp_path / "c"), 0)
    assert out == tmp_path / "c" / "cifar-100-python"
    assert len(cifar.read_cifar100_pickles(tmp_path / "c").train) == 500


def test_class_deletion_splits(digits: ImageDataset) -> None:
    s = class_deletion_splits(digits, [3, "7"])
    assert s.deleted == (3, 7) and s.retained == (0, 1, 2, 4, 5, 6, 8, 9)
    assert set(s.forget.labels) == {3, 7} and not set(s.retain.labels) & {3, 7}
    assert set(s.test_forget.labels) == {3, 7} and not set(s.test_retain.labels) & {3, 7}
    assert len(s.forget) + len(s.retain) == len(digits.train) and len(s.test_forget) + len(s.test_retain) == 360
    assert sorted(np.concatenate([s.forget.ids, s.retain.ids])) == sorted(digits.train.ids)
    assert all(len(s.split(n)) > 0 for n in SPLITS)


def test_subsampling_is_seeded_and_capped(digits: ImageDataset) -> None:
    s = class_deletion_splits(digits, [0], max_train_per_class=20, max_test_per_class=5, seed=3)
    assert len(s.forget) == 20 and len(s.retain) == 9 * 20 and len(s.test_retain) == 45 and len(s.test_forget) == 5
    again = class_deletion_splits(digits, [0], max_train_per_class=20, max_test_per_class=5, seed=3)
    assert np.array_equal(s.retain.ids, again.retain.ids)
    other = class_deletion_splits(digits, [0], max_train_per_class=20, max_test_per_class=5, seed=4)
    assert not np.array_equal(s.retain.ids, other.retain.ids)
    sub = subsample_per_class(digits.train, 10, 0)
    assert np.all(np.diff(np.searchsorted(digits.train.ids, sub.ids)) > 0)  # source order kept
    assert subsample_per_class(digits.train, None, 0) is digits.train
    with pytest.raises(DataError, match=">= 1"):
        subsample_per_class(digits.train, 0, 0)


def test_unknown_or_bad_classes_are_data_errors(digits: ImageDataset) -> None:
    with pytest.raises(DataError, match="unknown class id 12"):
        class_deletion_splits(digits, [12])
    with pytest.raises(DataError, match="unknown class 'cat'"):
        resolve_classes(["cat"], digits.class_names)
    with pytest.raises(DataError, match="no class to delete"):
        resolve_classes([], digits.class_names)
    with pytest.raises(DataError, match="cannot delete every class"):
        resolve_classes(list(range(10)), digits.class_names)
    assert resolve_classes(5, digits.class_names) == (5,)


def test_image_split_validates_shapes() -> None:
    with pytest.raises(DataError, match="uint8"):
        ImageSplit.of(np.zeros((2, 4, 4, 3), np.float32), [0, 1])
    with pytest.raises(DataError, match="labels"):
        ImageSplit(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64), np.arange(2))
    ok = ImageSplit.of(np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
    with pytest.raises(DataError, match="outside the 1 class names"):
        ImageDataset(ok, ok, ("only",))

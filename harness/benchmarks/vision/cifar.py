"""CIFAR-100 readers: the published `cifar-100-python` pickles and the Hugging Face hub layout (parquet).

Pickle layout (https://www.cs.toronto.edu/~kriz/cifar.html; the `cifar-100-python.tar.gz` archive unpacks to
`cifar-100-python/{train,test,meta}`): `train` and `test` are pickled dicts written by Python 2, read with
`encoding="bytes"` (so their keys are bytes): `b"data"` an (N, 3072) uint8 array whose rows hold the 1024 red,
then 1024 green, then 1024 blue values of a 32x32 image in row-major order, `b"fine_labels"` and
`b"coarse_labels"` lists of ints, `b"filenames"` and `b"batch_label"`; `meta` holds `b"fine_label_names"` and
`b"coarse_label_names"`. The unpickler accepts only the globals such files contain (numpy arrays and dtypes),
so a tampered file cannot run code.

Hub layout (`uoft-cs/cifar100`, converted to parquet by the datasets library): `cifar100/train-00000-of-00001.parquet`
and `cifar100/test-00000-of-00001.parquet` with columns `img` (a struct of PNG `bytes` and `path`),
`fine_label` and `coarse_label` (ClassLabel ints); the class names live in the schema's `huggingface`
metadata (the datasets `Features`), and in the dataset card.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.benchmarks.vision.data import ImageDataset, ImageSplit
from harness.core.errors import DataError

PICKLE_DIR = "cifar-100-python"
PICKLE_FILES = ("train", "test", "meta")
HUB_ID = "uoft-cs/cifar100"
IMAGE_SIDE = 32

#: CIFAR-100's fine label names in label order (the `meta` file's `fine_label_names`).
FINE_LABELS = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
#: CIFAR-100's 20 superclass names (`coarse_label_names`).
COARSE_LABELS = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

# (module, name) globals a CIFAR pickle may reference: numpy's array reconstruction (numpy 1.x and 2.x module
# names) and, in Python 3 protocol-2 pickles, the codec that rebuilds bytes.
_SAFE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """One CIFAR pickle (`encoding="bytes"`, numpy globals only); DataError naming the file."""
    if not path.is_file():
        raise DataError(f"CIFAR-100 file {path} not found (a cifar-100-python directory holds "
                        f"{', '.join(PICKLE_FILES)})")
    try:
        with path.open("rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataError(f"{path} is not a CIFAR-100 pickle: {err}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def find_pickle_dir(path: Path) -> Path | None:
    """`path` itself or `path/cifar-100-python` when it holds a CIFAR `train` pickle, else None."""
    for candidate in (path, path / PICKLE_DIR):
        if (candidate / "train").is_file() and (candidate / "meta").is_file():
            return candidate
    return None


def _field(d: dict, key: str, path: Path) -> Any:
    try:
        return d[key.encode()]
    except KeyError:
        raise DataError(f"{path}: no {key!r} entry (keys: {sorted(k.decode(errors='replace') for k in d)})") from None


def _decode_names(names: Any, path: Path) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _pickle_split(path: Path) -> ImageSplit:
    d = read_pickle(path)
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, "fine_labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIDE * IMAGE_SIDE:
        raise DataError(f"{path}: 'data' must be an (N, 3072) uint8 array, got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} fine labels")
    # channel-major rows: 1024 R, 1024 G, 1024 B, each a 32x32 image in row-major order
    images = data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)
    return ImageSplit.of(images, labels)


def read_cifar100_pickles(directory: str | Path) -> ImageDataset:
    """CIFAR-100 from a `cifar-100-python` directory (or its parent): fine labels and their names."""
    root = Path(directory).expanduser()
    found = find_pickle_dir(root)
    d = found or (root / PICKLE_DIR if (root / PICKLE_DIR).is_dir() else root)
    files = {name: d / name for name in PICKLE_FILES}
    meta = read_pickle(files["meta"])
    names = _decode_names(_field(meta, "fine_label_names", files["meta"]), files["meta"])
    return ImageDataset(train=_pickle_split(files["train"]), test=_pickle_split(files["test"]), class_names=names,
                        source=str(d), files={k: str(v) for k, v in files.items()})


def find_parquet_shards(directory: Path, split: str) -> list[Path]:
    """The `split-*.parquet` shards of a hub-layout directory (`cifar100/`, `data/` or the directory itself)."""
    for sub in ("cifar100", "data", "."):
        shards = sorted((directory / sub).glob(f"{split}-*.parquet"))
        if shards:
            return shards
    return sorted(directory.rglob(f"{split}-*.parquet"))


def _class_names_from_metadata(schema: Any, label_column: str) -> tuple[str, ...] | None:
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        names = features[label_column]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return tuple(str(n) for n in names)


def _decode_png(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: an image cannot be decoded: {err}") from None


def table_split(table: Any, where: str, image_column: str = "img", label_column: str = "fine_label") -> ImageSplit:
    """An ImageSplit from an Arrow table of encoded images (struct with `bytes`) and int labels."""
    for col in (image_column, label_column):
        if col not in table.column_names:
            raise DataError(f"{where}: no column {col!r} (columns: {', '.join(table.column_names)})")
    cells = table.column(image_column).to_pylist()
    images = []
    for cell in cells:
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(data, bytes):
            raise DataError(f"{where}: column {image_column!r} must hold encoded image bytes")
        images.append(_decode_png(data, where))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{where}: images of different sizes {sorted(shapes)[:3]}; one size is needed")
    return ImageSplit.of(np.stack(images), np.asarray(table.column(label_column).to_pylist(), dtype=np.int64))


def _default_names(label_column: str, max_label: int) -> tuple[str, ...]:
    if label_column == "fine_label" and max_label < len(FINE_LABELS):
        return FINE_LABELS
    if label_column == "coarse_label" and max_label < len(COARSE_LABELS):
        return COARSE_LABELS
    return tuple(str(i) for i in range(max_label + 1))


def read_hub_parquet_dir(directory: str | Path, image_column: str = "img",
                         label_column: str = "fine_label") -> ImageDataset:
    """CIFAR-100 from a directory in the hub layout of `uoft-cs/cifar100` (pyarrow + PIL, no datasets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(directory).expanduser()
    splits: dict[str, ImageSplit] = {}
    names: tuple[str, ...] | None = None
    files: dict[str, str] = {}
    for split in ("train", "test"):
        shards = find_parquet_shards(root, split)
        if not shards:
            raise DataError(f"{root}: no {split}-*.parquet shard (hub layout: cifar100/{split}-00000-of-00001.parquet)")
        try:
            tables = [pq.read_table(p) for p in shards]
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{shards[0]} is not a readable parquet file: {err}") from None
        names = names or _class_names_from_metadata(tables[0].schema, label_column)
        table = pa.concat_tables(tables, promote_options="default")
        splits[split] = table_split(table, str(shards[0]), image_column, label_column)
        files[split] = ",".join(str(p) for p in shards)
    max_label = int(max(splits["train"].labels.max(), splits["test"].labels.max()))
    return ImageDataset(train=splits["train"], test=splits["test"],
                        class_names=names or _default_names(label_column, max_label), source=str(root), files=files)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(source: str) -> bool:
    """True for `owner/name` strings."""
    return bool(_HUB_ID.match(source))


@contextlib.contextmanager
def _datasets_offline() -> Iterator[None]:
    # datasets reads HF_HUB_OFFLINE once at import; flip its flag for this call so it never tries the network
    import datasets.config

    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _hub_snapshot(repo_id: str, cache_dir: str | None, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def load_hub_dataset(repo_id: str, *, cache_dir: str | None = None, datasets_cache_dir: str | None = None,
                     revision: str | None = None, label_column: str = "fine_label") -> ImageDataset:
    """`repo_id` from the local Hugging Face cache only: the hub file cache, else the datasets cache."""
    snapshot = _hub_snapshot(repo_id, cache_dir, revision)
    if snapshot is not None and find_parquet_shards(snapshot, "train"):
        data = read_hub_parquet_dir(snapshot, label_column=label_column)
        return ImageDataset(data.train, data.test, data.class_names, source=repo_id, files=data.files)
    try:
        import datasets
    except ImportError:
        raise DataError(f"dataset {repo_id!r} is not in the local Hugging Face hub cache, and the `datasets` "
                        "package (to read its datasets cache) is not installed") from None
    try:
        with _datasets_offline():
            dd = datasets.load_dataset(repo_id, cache_dir=datasets_cache_dir, revision=revision)
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        raise DataError(f"dataset {repo_id!r} is not in the local Hugging Face cache (offline; no hub snapshot and "
                        f"no prepared copy in the datasets cache): {type(err).__name__}: {err}. Download it once "
                        f"with network access (`datasets.load_dataset({repo_id!r})`), or point benchmark.source "
                        "at a directory of cifar-100-python pickles or hub-layout parquet files") from None
    return _from_dataset_dict(dd, repo_id, label_column)


def _from_dataset_dict(dd: Any, repo_id: str, label_column: str) -> ImageDataset:
    import datasets

    splits = {}
    for split in ("train", "test"):
        if split not in dd:
            raise DataError(f"dataset {repo_id!r} has no {split!r} split (splits: {', '.join(dd)})")
        ds = dd[split]
        image_column = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise DataError(f"dataset {repo_id!r}: no image column (features: {', '.join(ds.features)})")
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
        splits[split] = table_split(ds.with_format("arrow")[:], f"{repo_id}[{split}]", image_column, label_column)
    feature = dd["train"].features.get(label_column)
    names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    max_label = int(max(splits["train"].labels.max(), splits["test"].labels.max()))
    return ImageDataset(splits["train"], splits["test"], names or _default_names(label_column, max_label),
                        source=repo_id)

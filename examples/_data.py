"""Data for the examples: Fashion-MNIST from IDX files and CIFAR from the python tarballs.

numpy, gzip, tarfile and pickle only (no torchvision). Images come back as uint8 arrays
``[N, C, H, W]`` and labels as int64 ``[N]``; :class:`ImageDataset` turns them into normalised
float tensors for a :class:`~torch.utils.data.DataLoader`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import Dataset

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Split = tuple[U8, I64]

# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = (
    "apt-get update && apt-get install -y dataset-fashion-mnist  (as root, or with sudo)"
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes are used here
_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike[str]) -> npt.NDArray[Any]:
    """Read one IDX file (gzip-compressed if its name ends in ``.gz``) into a numpy array.

    The header is two zero bytes, a type code (0x08: unsigned byte), the number of dimensions
    and one big-endian uint32 size per dimension; the data follow in C order.

    Raises:
        ValueError: on a bad header or a data size that does not match it.
    """
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unsupported IDX type code 0x{code:02x} (only 0x08, uint8)")
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    data = np.frombuffer(raw[header:], dtype=_IDX_DTYPES[code])
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: header says shape {shape} ({int(np.prod(shape))} values) but the file "
            f"holds {data.size}"
        )
    return data.reshape(shape)


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """Load Fashion-MNIST: ``{"train": (images, labels), "test": (images, labels)}``.

    Images are uint8 ``[N, 1, 28, 28]``, labels int64 ``[N]`` in ``[0, 10)``. ``data_dir``
    (default ``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist``
    puts them) holds the four ``*-ubyte.gz`` files.

    Raises:
        FileNotFoundError: with the install command, when a file is missing.
    """
    root = Path(data_dir or FASHION_MNIST_DIR)
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}). On Debian or "
            f"Ubuntu install it with\n    {FASHION_MNIST_INSTALL}\nor download the four "
            "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist and pass "
            "--data-dir DIR"
        )
    out: dict[str, Split] = {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images = read_idx(root / images_name)
        labels = read_idx(root / labels_name)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not match "
                "([N, 28, 28] and [N] expected)"
            )
        out[split] = (images[:, None].copy(), labels.astype(np.int64))
    return out


# --------------------------------------------------------------------------- CIFAR

CIFAR: dict[str, dict[str, Any]] = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
        "test": ["cifar-10-batches-py/test_batch"],
        "label_key": b"labels",
        "num_classes": 10,
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["cifar-100-python/train"],
        "test": ["cifar-100-python/test"],
        "label_key": b"fine_labels",
        "num_classes": 100,
    },
}


def md5sum(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex md5 digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_cifar(name: str, data_dir: str | os.PathLike[str], *, download: bool = True) -> Path:
    """Return the path of the CIFAR tarball in ``data_dir``, downloading it when missing.

    The file's md5 is checked (an existing file too); a download that does not match is
    deleted.

    Raises:
        FileNotFoundError: when the file is missing and cannot be downloaded (no internet, or
            ``download=False``), saying where to put it.
        ValueError: on an md5 mismatch.
    """
    if name not in CIFAR:
        raise ValueError(f"name should be one of {sorted(CIFAR)}, but got name={name!r}")
    meta = CIFAR[name]
    root = Path(data_dir)
    path: Path = root / str(meta["filename"])
    if not path.is_file():
        how = (
            f"download {meta['url']} (md5 {meta['md5']}) on a machine with internet and put it "
            f"in {root}, or pass --data-dir DIR pointing at the directory that holds it"
        )
        if not download:
            raise FileNotFoundError(f"{path} not found; {how}")
        root.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        print(f"downloading {meta['url']} to {path}", flush=True)
        try:
            with (
                urllib.request.urlopen(meta["url"], timeout=60) as response,
                open(partial, "wb") as f,
            ):
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise FileNotFoundError(
                f"{path} not found and the download failed ({exc}); this machine may have no "
                f"internet: {how}"
            ) from exc
        got = md5sum(partial)
        if got != meta["md5"]:
            partial.unlink()
            raise ValueError(
                f"downloaded {meta['url']} has md5 {got}, expected {meta['md5']}; deleted it, "
                "try again"
            )
        partial.replace(path)
        return path
    got = md5sum(path)
    if got != meta["md5"]:
        raise ValueError(
            f"{path} has md5 {got}, expected {meta['md5']} (corrupt or partial download?); "
            "delete it to download it again"
        )
    return path


def _read_batches(tar: tarfile.TarFile, members: list[str], label_key: bytes) -> Split:
    images, labels = [], []
    for member in members:
        f = tar.extractfile(member)
        if f is None:
            raise ValueError(f"{member} in the tarball is not a regular file")
        batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(
    name: str, data_dir: str | os.PathLike[str], *, download: bool = True
) -> dict[str, Split]:
    """Load CIFAR-10 or CIFAR-100 from the standard python tarball (read in place).

    Returns ``{"train": (images, labels), "test": (images, labels)}`` with uint8 images
    ``[N, 3, 32, 32]`` and int64 labels (CIFAR-100: the 100 fine labels). See
    :func:`fetch_cifar` for the download and its errors.
    """
    path = fetch_cifar(name, data_dir, download=download)
    meta = CIFAR[name]
    with tarfile.open(path, "r:gz") as tar:
        return {
            split: _read_batches(tar, meta[split], meta["label_key"]) for split in ("train", "test")
        }


# --------------------------------------------------------------------------- torch side


class ImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """uint8 images ``[N, C, H, W]`` and labels as a dataset of ``(float image, label)``.

    Images are scaled to [0, 1] and standardised per channel with the training set's mean and
    std (pass them for the test set). ``__getitems__`` indexes a whole batch at once.
    """

    def __init__(
        self, images: U8, labels: I64, *, mean: Tensor | None = None, std: Tensor | None = None
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))
        if mean is None or std is None:
            x = self.images.float().div_(255)
            mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        self.mean = mean.reshape(1, -1, 1, 1)
        self.std = std.reshape(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Any) -> tuple[Tensor, Tensor]:
        """Images ``[n, C, H, W]`` (float32, standardised) and labels ``[n]`` of ``indices``."""
        idx = torch.as_tensor([int(i) for i in indices], dtype=torch.int64)
        x = (self.images[idx].float().div_(255) - self.mean) / self.std
        return x, self.labels[idx]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.batch([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        x, y = self.batch(indices)
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

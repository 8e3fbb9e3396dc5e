"""The centres of a scikit-learn k-means saved with joblib, read without running a pickle.

The released OpusLM semantic tokenizer ships its k-means as ``km_opus_lm.mdl``:
``joblib.dump`` of a scikit-learn ``KMeans`` / ``MiniBatchKMeans``.  Only its
``cluster_centers_`` is needed.  Unpickling such a file the ordinary way would
import scikit-learn and execute whatever the file names, so this reader
replays the pickle with a closed list of what may appear in a k-means file:

* the estimator classes (rebuilt as a plain record of their attributes, never
  as scikit-learn objects: scikit-learn is not imported),
* numpy arrays, dtypes and scalars, in joblib's layout (a ``NumpyArrayWrapper``
  record followed by the raw array bytes in the same file) or numpy's own.

Anything else (another class, a function call such as ``os.system``) stops the
reading with an error naming the file and the offending name; a file whose
top object is not a k-means, or whose centres are not a 2-D float matrix, is
refused too.  Compressed joblib files are refused with the advice to write an
uncompressed one.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

KMEANS_CLASSES = {
    ("sklearn.cluster._kmeans", "KMeans"),
    ("sklearn.cluster._kmeans", "MiniBatchKMeans"),
    ("sklearn.cluster.k_means_", "KMeans"),  # scikit-learn < 0.22
    ("sklearn.cluster.k_means_", "MiniBatchKMeans"),
}
JOBLIB_WRAPPERS = {("joblib.numpy_pickle", "NumpyArrayWrapper"), ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper")}
# numpy names a k-means file holds: arrays, their dtypes, scalars (inertia_, _tol ...)
NUMPY_NAMES = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
# magic prefixes of joblib's compressed formats (zlib, gzip, bz2, xz, lzma, lz4)
COMPRESSED = (b"ZF", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00", b"\x04\x22\x4d\x18")


class KMeansFileError(ValueError):
    """A k-means file that is not what it should be (named in the message)."""


def _numpy_attr(module: str, name: str):
    """numpy's own reconstruction helpers, wherever this numpy version keeps them."""
    if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
        return getattr(np, name)
    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma
    return getattr(ma, name)


class _Record:
    """Stand-in for an allowed class: keeps the state the pickle gives it."""

    kind = "record"

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise KMeansFileError(f"unexpected state of type {type(state).__name__}")
        self.state = state


class _KMeansRecord(_Record):
    kind = "kmeans"


class _ArrayWrapperRecord(_Record):
    kind = "array"


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its BUILD can be extended
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, where: str):
        super().__init__(file)
        self.file_handle = file
        self.where = where
        self.classes_seen: list[str] = []

    def find_class(self, module, name):
        self.classes_seen.append(f"{module}.{name}")
        if (module, name) in KMEANS_CLASSES:
            return _KMeansRecord
        if (module, name) in JOBLIB_WRAPPERS:
            return _ArrayWrapperRecord
        if (module, name) in NUMPY_NAMES:
            return _numpy_attr(module, name)
        raise KMeansFileError(
            f"{self.where}: the pickle names {module}.{name}, which a scikit-learn k-means file does not hold; "
            "refusing to read it (only k-means estimators and numpy arrays are accepted)")

    def load_build(self):
        super().load_build()
        top = self.stack[-1]
        if isinstance(top, _ArrayWrapperRecord):
            self.stack[-1] = self._read_joblib_array(top.state)

    dispatch[pickle.BUILD[0]] = load_build

    def _read_joblib_array(self, st: dict) -> np.ndarray:
        """The array bytes joblib writes right after its wrapper record."""
        try:
            shape, order, dtype = tuple(int(x) for x in st["shape"]), st.get("order", "C"), np.dtype(st["dtype"])
        except (KeyError, TypeError) as e:
            raise KMeansFileError(f"{self.where}: malformed joblib array record ({e!r})") from None
        if dtype.hasobject:
            inner = _RestrictedUnpickler(self.file_handle, self.where)
            arr = inner.load()
            self.classes_seen += inner.classes_seen
            return np.asarray(arr)
        if st.get("numpy_array_alignment_bytes") is not None:
            pad = self.file_handle.read(1)
            if len(pad) != 1:
                raise KMeansFileError(f"{self.where}: truncated file (array padding)")
            self.file_handle.read(pad[0])
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dtype.itemsize
        data = self.file_handle.read(nbytes)
        if len(data) != nbytes:
            raise KMeansFileError(f"{self.where}: truncated file: an array of {nbytes} bytes has only {len(data)}")
        arr = np.frombuffer(data, dtype=dtype, count=count).copy()
        arr = arr.reshape(shape[::-1]).T if order == "F" else arr.reshape(shape)
        return arr.astype(dtype.newbyteorder("="), copy=False)


def read_kmeans_centers(path: str | Path) -> np.ndarray:
    """``cluster_centers_`` of a joblib-saved scikit-learn k-means, ``[K, D]`` float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"k-means model not found: {path}")
    raw = path.read_bytes()
    if raw[:1] != b"\x80" and any(raw.startswith(m) for m in COMPRESSED):
        raise KMeansFileError(f"{path}: a compressed joblib file; write it again uncompressed (joblib.dump(km, path))")
    u = _RestrictedUnpickler(io.BytesIO(raw), str(path))
    try:
        obj = u.load()
    except KMeansFileError:
        raise
    except Exception as e:  # a damaged or foreign file: say which and what broke
        raise KMeansFileError(f"{path}: not a readable k-means pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, _KMeansRecord):
        raise KMeansFileError(f"{path}: holds a {type(obj).__name__}, not a scikit-learn KMeans / MiniBatchKMeans")
    centers = obj.state.get("cluster_centers_")
    if centers is None:
        raise KMeansFileError(f"{path}: the k-means has no cluster_centers_ (was it fitted?)")
    centers = np.asarray(centers)
    if centers.ndim != 2 or centers.shape[0] < 1 or not np.issubdtype(centers.dtype, np.floating):
        raise KMeansFileError(f"{path}: cluster_centers_ must be a 2-D float matrix, got {centers.dtype} {centers.shape}")
    if not np.isfinite(centers).all():
        raise KMeansFileError(f"{path}: cluster_centers_ holds non-finite values")
    return centers.astype(np.float32)

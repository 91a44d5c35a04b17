"""Is a model directory whole and self-consistent? A checksum manifest written at save time, and a
check of everything a replica would load, run before a model is rolled out.

::

    MODEL/manifest.json   {"format": 1, "algorithm": "sha256", "unsealed": ["metrics.json"],
                           "files": {"model.pt": {"bytes": 1234, "sha256": "..."}, ...}}

:func:`write_manifest` seals every file of the directory (``save_model_dir`` calls it last,
before the directory is renamed into place). ``unsealed`` names files that are rewritten after
saving and that ranking never reads (``metrics.json``: held-out figures added later).

:func:`verify_model_dir` raises :class:`ModelIntegrityError` (one line naming the directory and
what is wrong) unless:

* every sealed file is there with its size and sha256, and no other file or folder is (a
  truncated or replaced ``model.pt``, a vocabulary copied from another run; the temporary a
  killed rewrite of ``manifest.json`` or ``metrics.json`` left is no damage);
* ``config.json`` is a model config this code builds;
* the weights load with ``torch.load(weights_only=True)`` and have exactly the model's parameter
  names and shapes (checked against the model built on the meta device: no memory);
* the vocabularies have the sizes of the model's embedding tables and are the ones it was trained
  on (``config.json``'s ``data.vocab_sha256``, :func:`vocab_digest`: every preprocess may order
  them anew, so equal sizes are not enough), and the purchases and product stats of ``state/``
  load and agree with them;
* the MF index, where there is one, loads, holds a vector of the MF width per product row, and
  holds this model's MF vectors (compared on a seeded sample of rows).
* ``metrics.json`` (unsealed) reads as a JSON object (the model serves without its figures: their
  readers, :func:`ncf.model.files.read_metrics`, refuse figures naming another version);
* the masks of trained rows are both there or neither.

The small JSON files (``config.json``, ``manifest.json``, ``metrics.json``) are read only as
regular files of at most 64 MiB (:func:`ncf.jsonio.read_small_json`): a FIFO would block the check
and every Serve settings parse (:func:`model_fingerprint`). A folder that will not list or a file
that will not read (no permission, a failing disk) is one line naming it and the OS's errno.

A symlinked directory (blue/green) is resolved once and every check reads that target.

:func:`verify_data_state` checks a DATA directory's state the same way (it loads, its parts
agree), short of the comparison with a model: a DATA directory may be newer than the model.

The checks catch a directory that is consistent with its manifest but wrong (a trainer that
wrote the wrong vocabulary and sealed it) as well as one damaged after saving.

Example::

    verify_model_dir("artifacts/demo/model")      # the directory checked (a link's target), or ModelIntegrityError
    python -m jobs.verify MODEL                   # the same from a shell (exit 2 on error)
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from ncf.data import layout
from ncf.data.product_stats import ProductStats
from ncf.data.user_state import UserStates
from ncf.data.vocab import Vocabularies
from ncf.errors import InputError, cannot_access, one_line
from ncf.jsonio import is_temporary_of, read_small, read_small_json, write_json
from ncf.model import ann
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.config import ModelConfig
from ncf.model.files import (
    CONFIG,
    METRICS,
    STATE,
    TRAINED_PRODUCTS,
    TRAINED_USERS,
    WEIGHTS,
    load_trained_rows,
    read_config,
    read_metrics,
)
from ncf.model.ranking import RankingSettings
from ncf.staging import present

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Index rows compared with the model's MF vectors (every row of a smaller catalog).
INDEX_SAMPLE = 256
_CHUNK = 1 << 20


class ModelIntegrityError(InputError):
    """A model directory that must not be served: damaged, incomplete or inconsistent."""


class DataIntegrityError(ModelIntegrityError):
    """A DATA directory whose state must not be served: unreadable or inconsistent."""


def sha256_of(path: str) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def vocab_digest(directory: str) -> str:
    """sha256 over the vocabulary files of a DATA directory (or a model's ``state/``): what the
    rows of the embedding tables mean."""
    return files_digest(layout.vocab_dir(directory))


def files_digest(root: str) -> str:
    """sha256 over the names and contents of the files in ``root``. Raises
    :class:`ModelIntegrityError` on anything else there (a folder would be an IsADirectoryError
    traceback; a FIFO would block the read)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ModelIntegrityError(f"{root}: {name} is not a file (only files belong there); remove it")
        digest.update(name.encode() + b"\0" + bytes.fromhex(sha256_of(path)))
    return digest.hexdigest()


def model_fingerprint(model_dir: str) -> str:
    """config.json's version and a digest of the checksum manifest, which changes whenever a
    file ranking reads does: a model saved again at the same path is noticed (Serve's rollouts,
    the nightly job's actors). A directory without a manifest gets a digest of nothing: its
    verification names what is missing. Cheap: reads two small files."""
    return f"{read_config(model_dir).get('version')}:{_small_file_digest(os.path.join(model_dir, MANIFEST))}"


def data_fingerprint(data: str) -> str:
    """The DATA directory's real path, its stats.json and that file's modification time: every
    jobs.preprocess run writes a new stats.json (counts, run time) into a directory swapped in
    whole, so a DATA rebuilt at the same path gets a new fingerprint. Cheap: reads one small file."""
    stats = layout.stats_path(data)
    modified = os.stat(stats).st_mtime_ns if os.path.exists(stats) else 0
    return _small_file_digest(stats, extra=f"{os.path.realpath(data)}\0{modified}".encode())


def _small_file_digest(path: str, extra: bytes = b"") -> str:
    """Read with a bound (:func:`ncf.jsonio.read_small`): Serve computes it parsing its settings,
    where a FIFO in the file's place would block every deployment."""
    digest = hashlib.sha256(extra)
    if os.path.lexists(path):
        try:
            digest.update(read_small(path))
        except (OSError, ValueError) as e:
            where, name = os.path.split(path)
            raise ModelIntegrityError(f"{where}: unreadable {name} ({type(e).__name__}: {one_line(e)})") from None
    return digest.hexdigest()[:16]


def _files(model_dir: str, named: Optional[str] = None) -> List[str]:
    """Every regular file under ``model_dir``, as sorted paths relative to it ('/'-separated)."""
    return _walk(model_dir, named)[0]


def _walk(model_dir: str, named: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(files, folders) under ``model_dir``, as sorted paths relative to it ('/'-separated).
    A symbolic link inside is refused (errors name ``named``, default ``model_dir``): the walk
    would not follow one to a directory (its files left out of the seal), and one to a file
    would seal whatever it points at later."""
    files, folders = [], []
    try:
        for root, directories, names in os.walk(model_dir, onerror=_raise):
            for name in directories + names:
                path = os.path.join(root, name)
                relative = os.path.relpath(path, model_dir).replace(os.sep, "/")
                if os.path.islink(path):
                    raise ModelIntegrityError(
                        f"{named or model_dir}: {relative} is a symbolic link; copy what it points to in"
                    )
                if name in names and not stat.S_ISREG(os.lstat(path).st_mode):  # a read of a FIFO never ends
                    raise ModelIntegrityError(
                        f"{named or model_dir}: {relative} is not a regular file (a pipe, socket or device); remove it"
                    )
                (files if name in names else folders).append(relative)
    except OSError as e:  # a folder that will not list (no permission, a failing disk): not "missing"
        where = os.path.relpath(e.filename or model_dir, model_dir).replace(os.sep, "/")
        raise _read_error(named or model_dir, f"list {where}", e) from None
    return sorted(files), sorted(folders)


def _raise(error: OSError) -> None:
    """os.walk's onerror: its default skips a folder it cannot list, whose files then read as
    missing (a state/vocab without permission was "4 file(s) of the manifest missing")."""
    raise error


def _read_error(named: str, what: str, error: OSError) -> ModelIntegrityError:
    return ModelIntegrityError(f"{named}: {cannot_access(what, error)}")


def _leftovers(paths: Iterable[str], rewritten: Iterable[str]) -> Set[str]:
    """The temporaries that a rewrite of one of ``rewritten`` (the manifest, by a re-seal; an
    unsealed file) killed before its rename left beside it: neither damage nor to be sealed."""
    return {
        p
        for p in paths
        for r in rewritten
        if posixpath.dirname(p) == posixpath.dirname(r) and is_temporary_of(posixpath.basename(p), r)
    }


def _folders_of(paths: Iterable[str]) -> Set[str]:
    """Every folder holding one of ``paths`` (relative, '/'-separated), at any depth."""
    folders = set()
    for path in paths:
        head = posixpath.dirname(path)
        while head:
            folders.add(head)
            head = posixpath.dirname(head)
    return folders


def write_manifest(model_dir: str, unsealed: Iterable[str] = ()) -> Dict:
    """Writes ``model_dir/manifest.json``: size and sha256 of every file but ``unsealed`` ones
    and the temporaries a killed rewrite left (:func:`_leftovers`)."""
    unsealed = sorted(set(unsealed))
    present = _files(model_dir)
    skipped = {MANIFEST, *unsealed} | _leftovers(present, [MANIFEST, *unsealed])
    files = {
        name: {
            "bytes": os.path.getsize(os.path.join(model_dir, name)),
            "sha256": sha256_of(os.path.join(model_dir, name)),
        }
        for name in present
        if name not in skipped
    }
    manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "unsealed": unsealed, "files": files}
    write_json(os.path.join(model_dir, MANIFEST), manifest)
    return manifest


def check_manifest(model_dir: str, named: Optional[str] = None) -> Dict:
    """Every sealed file present with its size and checksum, nothing else added (no file, no
    folder); returns the manifest. Sizes are compared first, so a truncated file is named without
    hashing it. Errors name ``named`` (default ``model_dir``: see :func:`verify_model_dir`)."""
    path, named = os.path.join(model_dir, MANIFEST), named or model_dir
    if not os.path.lexists(path):
        raise ModelIntegrityError(
            f"{named}: no {MANIFEST} (save_model_dir writes it); re-save the model, or seal a directory "
            "you trust with python -m jobs.verify --seal MODEL"
        )
    try:
        manifest = read_small_json(path)  # a FIFO or a device there: refused, not read forever
        # Only the metrics are rewritten after the seal: a manifest naming other files unsealed
        # (model.pt, say) would leave them unchecked.
        files, unsealed = manifest["files"], set(manifest.get("unsealed", [])) & {METRICS}
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("algorithm") != "sha256":
            raise ValueError(f"format {manifest.get('format')!r}, algorithm {manifest.get('algorithm')!r}")
        for name, entry in files.items():
            if not (
                isinstance(entry, dict)
                and type(entry.get("bytes")) is int
                and isinstance(entry.get("sha256"), str)
                and len(entry["sha256"]) == 64
            ):
                raise ValueError(f"the entry of {name!r} is not a size and a sha256: {str(entry)[:80]}")
    except OSError as e:
        raise _read_error(named, f"read {MANIFEST}", e) from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelIntegrityError(f"{named}: unreadable {MANIFEST} ({one_line(e)})") from None
    found, folders = _walk(model_dir, named)
    present = set(found) - {MANIFEST}
    missing = sorted(set(files) - present)
    if missing:
        raise ModelIntegrityError(f"{named}: {len(missing)} file(s) of the manifest missing: {missing[:5]}")
    # A rewrite of an unsealed file (metrics.json), or a re-seal (jobs.verify --seal), killed
    # before its rename leaves its temporary: not tampering.
    extra = sorted(present - set(files) - unsealed - _leftovers(present, [MANIFEST, *unsealed]))
    if extra:
        raise ModelIntegrityError(f"{named}: file(s) not in the manifest: {extra[:5]}")
    # The manifest lists files only: a folder added empty would pass, and one in state/vocab/
    # fails the vocabulary's digest later.
    empty = sorted(set(folders) - _folders_of(files))
    if empty:
        raise ModelIntegrityError(f"{named}: folder(s) holding no file of the manifest: {empty[:5]}; remove them")
    for name, expected in files.items():
        size = _read(named, name, os.path.getsize, os.path.join(model_dir, name))
        if size != expected["bytes"]:
            raise ModelIntegrityError(f"{named}: {name} has {size} bytes, the manifest says {expected['bytes']}")
    for name, expected in files.items():
        if _read(named, name, sha256_of, os.path.join(model_dir, name)) != expected["sha256"]:
            raise ModelIntegrityError(f"{named}: {name} does not match its sha256 in the manifest")
    return manifest


def _read(named: str, name: str, read, path: str):
    """``read(path)``, its OSError (EIO of a failing disk, no permission) said in one line."""
    try:
        return read(path)
    except OSError as e:
        raise _read_error(named, f"read {name}", e) from None


# A verification reads every byte (sha256 at about 1.3 GB/s on the development machine, then the
# weights and state loaded): from this size on, a job says so before the wait (10M x 1M: minutes).
VERIFY_NOTE_BYTES = 1 << 30


def note_verification(what: str, paths: Sequence[str]) -> None:
    """One line on stderr before a verification reading ``paths`` (directories, followed through
    a link once), where they hold at least :data:`VERIFY_NOTE_BYTES`."""
    total = 0
    for path in paths:
        for folder, _, files in os.walk(os.path.realpath(path)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:  # gone meanwhile, or unreadable: the verification names it
                    pass
    if total >= VERIFY_NOTE_BYTES:
        print(f"[verify] {what}: reading its {total / 2**30:.1f} GiB to verify it", file=sys.stderr, flush=True)


def verify_model_dir(model_dir: str) -> str:
    """Raises :class:`ModelIntegrityError` unless the directory is whole and self-consistent
    (see the module docstring); reads every byte (the weights twice: their checksums, then their
    values' finiteness), loads no model into memory.

    Returns the directory it verified: ``model_dir`` resolved once (a blue/green link's target),
    which every step reads, so a link repointed meanwhile cannot pass files no step checked;
    load that one. Errors name ``model_dir``."""
    real = os.path.realpath(model_dir)
    if not (present(real) and os.path.isdir(real)):
        raise ModelIntegrityError(f"{model_dir}: not a directory")
    if not os.path.lexists(os.path.join(real, MANIFEST)) and not os.path.lexists(os.path.join(real, CONFIG)):
        read_config(real, named=model_dir)  # its "not a model directory (no config.json)" error
    # With a manifest, a half-copied directory (config.json missing, or a dangling link) is named
    # for the file it lacks, not called no model directory.
    check_manifest(real, named=model_dir)
    try:
        config = read_config(real, named=model_dir)
        model_config = ModelConfig.from_dict(config["model"])
        str(config["version"]), int(config["trained_through"])
        # What the registry's lineage and the ranking's row masks read: a hand edit sealed again
        # passed here, then ended their reads in a KeyError or ValueError traceback.
        int(config.get("rows_trained_before", config["trained_through"])), str(config["data"]["path"])
        if not isinstance(config.get("ranking", {}), dict):
            raise TypeError(f"ranking is a {type(config['ranking']).__name__}, not an object")
        # As every replica reads them: a hand-edited ranking sealed again (jobs.verify --seal)
        # passed here, became current, and every replica refused it.
        RankingSettings.of_model(config.get("ranking") or {}, model_dir)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ModelIntegrityError(f"{model_dir}: bad config.json ({one_line(e)})") from None
    weights = _check_weights(model_dir, os.path.join(real, WEIGHTS), model_config)
    trained_vocab = (config.get("data") or {}).get("vocab_sha256")
    _check_state(model_dir, os.path.join(real, STATE), model_config, trained_vocab)
    _check_index(model_dir, real, model_config, weights)
    _check_trained_rows(model_dir, real, model_config)
    _check_metrics(model_dir, real)
    return real


def _check_metrics(model_dir: str, directory: str) -> None:
    """metrics.json reads as an object: it is outside the checksums, and the registry, jobs.evaluate
    and the next update_metrics read it."""
    try:
        # The version is the readers' of the figures to compare (the registry, jobs.evaluate): the
        # model serves without them, so a copied metrics.json must not stop it serving.
        read_metrics(directory, named=model_dir, check_version=False)
    except InputError as e:
        raise ModelIntegrityError(str(e)) from None


def _check_weights(model_dir: str, path: str, config: ModelConfig) -> Dict[str, torch.Tensor]:
    """The weights (memory-mapped), once their names and shapes fit ``config``."""
    try:
        # mmap: the tensors stay on disk; names and shapes here, a sample of MF rows in _check_index.
        weights = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:  # truncated zip, pickled objects, not a checkpoint at all
        raise ModelIntegrityError(
            f"{model_dir}: model.pt does not load with weights_only=True ({one_line(e)})"
        ) from None
    check_weights(model_dir, weights, config)
    return weights


def check_weights(model_dir: str, weights, config: ModelConfig, finite: bool = True) -> None:
    """Raises :class:`ModelIntegrityError` (naming ``model_dir``) unless ``weights`` is a state dict of
    exactly ``config``'s model: its names, shapes and dtypes, every value finite (unless not
    ``finite``: a read of every weight). The directory's check runs it on the file;
    :func:`ncf.model.directory.save_model_dir` on what it is given, before it writes anything (a
    refit that diverged, a config of other sizes); :func:`ncf.model.directory.load_model` all but
    the values, on every load."""
    if not isinstance(weights, dict):
        raise ModelIntegrityError(f"{model_dir}: model.pt holds a {type(weights).__name__}, not a state dict")
    not_tensors = sorted(name for name, t in weights.items() if not isinstance(t, torch.Tensor))
    if not_tensors:
        raise ModelIntegrityError(f"{model_dir}: model.pt holds entries that are not tensors: {not_tensors[:3]}")
    with torch.device("meta"):
        built = AdvancedNCF(config).state_dict()
    expected = {name: tuple(t.shape) for name, t in built.items()}
    got = {name: tuple(t.shape) for name, t in weights.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ModelIntegrityError(
            f"{model_dir}: model.pt does not fit config.json: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    wrong = [f"{name} {got[name]} != {shape}" for name, shape in expected.items() if got[name] != shape]
    if wrong:
        raise ModelIntegrityError(f"{model_dir}: model.pt shapes do not fit config.json: {'; '.join(wrong[:3])}")
    # The loaded tensors become the model's as they are (assign=True): another dtype fails at the
    # first scoring, not here.
    wrong = [f"{n} {weights[n].dtype} != {t.dtype}" for n, t in built.items() if weights[n].dtype != t.dtype]
    if wrong:
        raise ModelIntegrityError(f"{model_dir}: model.pt dtypes do not fit the model: {'; '.join(wrong[:3])}")
    not_finite = [name for name, t in weights.items() if finite and t.is_floating_point() and not _all_finite(t)]
    if not_finite:
        raise ModelIntegrityError(
            f"{model_dir}: model.pt holds NaN or infinite weights in {not_finite[:3]} (a training that diverged?)"
        )


def _all_finite(tensor: torch.Tensor, rows: int = 1 << 16) -> bool:
    """Whether every value is finite, read a block of rows at a time (a memory-mapped table of
    millions of rows is never held whole)."""
    if tensor.dim() == 0:
        return bool(torch.isfinite(tensor))
    return all(bool(torch.isfinite(tensor[i : i + rows]).all()) for i in range(0, tensor.shape[0], rows))


def _check_trained_rows(model_dir: str, directory: str, config: ModelConfig) -> None:
    """The masks of the rows the run's lists held, where ``directory`` (``model_dir`` resolved)
    has them: both or neither (:func:`ncf.model.files.load_trained_rows`), boolean, one entry per
    table row."""
    try:
        rows = load_trained_rows(directory)
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"{model_dir}: {one_line(e)}") from None
    check_trained_rows(model_dir, rows, config)


def check_trained_rows(named: str, rows: Optional[tuple], config: ModelConfig) -> None:
    """(users, products) masks (or None) fit ``config``'s tables: boolean, one entry per row."""
    if rows is not None and len(rows) != 2:
        raise ModelIntegrityError(f"{named}: {len(rows)} mask(s) of trained rows, not the (users, products) pair")
    masks = zip((TRAINED_USERS, TRAINED_PRODUCTS), (config.num_users, config.num_products), rows or ())
    for name, size, mask in masks:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (size,):
            raise ModelIntegrityError(f"{named}: {name} holds {mask.dtype} {mask.shape}, the tables have {size} rows")


def _check_index(model_dir: str, directory: str, config: ModelConfig, weights: Dict[str, torch.Tensor]) -> None:
    """The MF index, where ``directory`` (``model_dir`` resolved) has one, loads, has a vector per
    product row, and holds this model's vectors for a seeded sample of :data:`INDEX_SAMPLE` rows (an
    index of another model of the same shape, sealed again, would give every household another
    model's candidates)."""
    if not os.path.exists(ann.index_path(directory)):
        return
    try:
        index = ann.ProductIndex.load(ann.index_path(directory))
    except Exception as e:  # truncated, or not a FAISS index at all
        raise ModelIntegrityError(f"{model_dir}: {ann.INDEX_FILE} does not load ({one_line(e)})") from None
    if (index.rows, index.dim) != (config.num_products, config.mf_embedding_dim):
        raise ModelIntegrityError(
            f"{model_dir}: {ann.INDEX_FILE} holds {index.rows} vectors of {index.dim}, the model has "
            f"{config.num_products} products of {config.mf_embedding_dim}"
        )
    if not ann.has_mf(weights):
        raise ModelIntegrityError(f"{model_dir}: {ann.INDEX_FILE} indexes the MF path, which this model does not have")
    rows = np.sort(np.random.default_rng(0).choice(index.rows, min(INDEX_SAMPLE, index.rows), replace=False))
    stored, expected = index.vectors(rows), ann.product_vectors(weights, rows)
    same = np.isclose(stored, expected, rtol=1e-5, atol=1e-6).all(axis=1)
    if not same.all() and np.isclose(stored, -expected, rtol=1e-5, atol=1e-6).all():
        raise ModelIntegrityError(
            f"{model_dir}: {ann.INDEX_FILE} holds this model's MF vectors negated: an index saved before "
            "2026-12-06 for a model whose final layer weighs the MF logit negatively (its first stage listed "
            "the products that path scores lowest); save the model again to rebuild it"
        )
    if not same.all():
        off = int(rows[np.argmin(same)])
        raise ModelIntegrityError(
            f"{model_dir}: {ann.INDEX_FILE} does not hold this model's MF vectors (product row {off} differs): "
            "an index of another model; save the model again to rebuild it"
        )


def verify_data_state(data: str) -> None:
    """Raises :class:`DataIntegrityError` unless the state of a DATA directory (``jobs.deploy
    --data``: ``vocab/``, ``user_state/``, ``product_stats/``) loads and agrees with itself. A DATA
    directory has no manifest and may hold households and products the model never saw, so this is
    the part of :func:`verify_model_dir`'s state check that does not compare with the model."""
    vocabs, states, stats = _load_state(f"{data}: the DATA's state", data, DataIntegrityError)
    _check_state_agrees(data, vocabs, states, stats, DataIntegrityError)


def _check_state(model_dir: str, state: str, config: ModelConfig, trained_vocab: Optional[str]) -> None:
    vocabs, states, stats = _load_state(f"{model_dir}: state/", state, ModelIntegrityError)
    tables = {
        name: getattr(config, name) for name in ("num_users", "num_products", "num_departments", "num_categories")
    }
    sizes = vocabs.sizes()
    wrong = [f"{name} {sizes[name]} != {tables[name]}" for name in tables if sizes[name] != tables[name]]
    if wrong:
        raise ModelIntegrityError(f"{model_dir}: vocabularies do not fit the embedding tables: {'; '.join(wrong)}")
    try:
        found_vocab = vocab_digest(state) if trained_vocab is not None else None
    except ModelIntegrityError as e:  # a folder in state/vocab/: named through the path given
        raise ModelIntegrityError(f"{model_dir}: state/vocab/{str(e)[len(state) + len('/vocab: ') :]}") from None
    if trained_vocab is not None and found_vocab != trained_vocab:
        raise ModelIntegrityError(
            f"{model_dir}: state/vocab is not the vocabulary the weights were trained on (config.json's "
            "data.vocab_sha256 differs): its rows would name other households and products"
        )
    _check_state_agrees(model_dir, vocabs, states, stats, ModelIntegrityError)


def _load_state(what: str, state: str, error: type):
    try:
        return (
            Vocabularies.load(layout.vocab_dir(state)),
            UserStates.load(layout.user_state_dir(state)),
            ProductStats.load(layout.product_stats_dir(state)),
        )
    except Exception as e:  # missing or unreadable Parquet / .npy files
        raise error(f"{what} does not load ({one_line(e)})") from None


def _check_state_agrees(where: str, vocabs: Vocabularies, states: UserStates, stats: ProductStats, error: type) -> None:
    """Purchases and product stats sized like the vocabularies, product indices inside them."""
    sizes = vocabs.sizes()
    if states.num_users != sizes["num_users"]:
        raise error(f"{where}: user_state has {states.num_users} households, the vocabulary {sizes['num_users']}")
    if (
        len(states.products)
        and not 0 <= int(np.min(states.products)) <= int(np.max(states.products)) < sizes["num_products"]
    ):
        raise error(f"{where}: user_state holds product indices outside 0..{sizes['num_products'] - 1}")
    if stats.num_products != sizes["num_products"]:
        raise error(f"{where}: product_stats has {stats.num_products} products, the vocabulary {sizes['num_products']}")

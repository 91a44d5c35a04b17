"""The model directory: a trained model and the state it was trained with, as plain data.

::

    MODEL/
      config.json        format version, version, model config, training run, data boundaries,
                         trained_through (labels end), ranking settings
      model.pt           state_dict, loaded with torch.load(weights_only=True)
      state/             a copy of the training DATA's state: vocab/ (the embedding tables' rows),
                         user_state/ (every household's purchases through the data's end) and
                         product_stats/ (products at the data's end)
      metrics.json       training and evaluation metrics, and the model version they are of
      mf_index.faiss     only where a first stage over twice the model's households would
                         search one (exact lists too large to cache or too long to compute:
                         :func:`saves_index`): the MF products' HNSW index (:mod:`ncf.model.ann`)
      trained_users.npy, trained_products.npy
                         which table rows the run's training lists held (the others rank with
                         the unknown row; validated and refit runs only)
      manifest.json      size and sha256 of every file but metrics.json (:mod:`ncf.model.integrity`)

The state is data, not model: ranking reads histories from ``MODEL/state`` by default, or from
any newer DATA (``Recommender.load(MODEL, data=DATA)``), without retraining.

Example::

    model_dir = ModelDir("artifacts/demo/model")
    model_dir.version, model_dir.trained_through
    model = model_dir.load_model()
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from contextlib import contextmanager
from typing import Dict, Iterator, NoReturn, Optional, Tuple

import torch

from ncf.code import code_version
from ncf.data import layout
from ncf.data.examples import listed_rows
from ncf.data.features import FEATURES_VERSION
from ncf.data.vocab import Vocabularies
from ncf.errors import InputError, TryLater, full_disk_said, said_as
from ncf.jsonio import write_json
from ncf.model.advanced_ncf import AdvancedNCF, model_from_weights
from ncf.model.ann import BUILD_DEPTH, MF_CANDIDATES, ProductIndex, has_mf, index_path, load_if_present, needed
from ncf.model.config import ModelConfig
from ncf.model.files import (  # noqa: F401 (re-exported: the names callers know)
    CONFIG,
    FORMAT_VERSION,
    METRICS,
    METRICS_VERSION,
    STATE,
    TRAINED_PRODUCTS,
    TRAINED_USERS,
    WEIGHTS,
    one_line,
    read_config,
    read_metrics,
    read_trained_rows,
    save_trained_rows,
)
from ncf.model.integrity import (
    ModelIntegrityError,
    check_trained_rows,
    check_weights,
    sha256_of,
    vocab_digest,
    write_manifest,
)
from ncf.splits import REFIT, VALIDATED
from ncf.staging import replacing

STATE_PARTS = (layout.vocab_dir, layout.user_state_dir, layout.product_stats_dir)
# Two saves to one MODEL take turns (a save takes seconds) rather than one failing; past this
# wait the save is refused (exit 75: another run is writing it).
SAVE_WAIT_S = 120.0


def copy_state(data: str, destination: str) -> None:
    """Copies DATA's state (vocabularies, purchases, product stats) into ``destination``. Give it
    a resolved ``data`` (:func:`os.path.realpath`): each part is read through the path anew."""
    for part in STATE_PARTS:
        shutil.copytree(part(data), part(destination))


def _data_identity(source: str) -> Optional[Tuple[str, str]]:
    """stats.json's sha256 and the vocabularies' digest (None where they no longer read): every
    jobs.preprocess run writes a new stats.json (its run time), so another run's DATA differs."""
    try:
        return sha256_of(layout.stats_path(source)), vocab_digest(source)
    except OSError:
        return None


@contextmanager
def _one_preprocess_run(data: str, source: str) -> Iterator[None]:
    """Refuses (TryLater) what the block read from ``source`` (DATA resolved) when a preprocess
    replaced it meanwhile. A blue/green link's old target stays in place, so resolving pins it;
    a plain DATA directory is swapped at its path and the old one deleted, so parts of two runs
    (the old vocabularies, the new purchases) could be copied, and every later check passes."""
    before = _data_identity(source)
    try:
        yield
    except OSError:  # the old directory deleted under the copy
        if _data_identity(source) == before:
            raise
        _refuse_replaced(data)
    if _data_identity(source) != before:
        _refuse_replaced(data)


def _refuse_replaced(data: str) -> NoReturn:
    raise TryLater(
        f"{data}: jobs.preprocess replaced it while the model directory copied its state; nothing saved: "
        "run again when that run has finished (a DATA symlink, blue/green, is read from one run throughout)"
    ) from None


# An index is saved for a model whose households are within this factor of needing one: a DATA
# grown since (fresh histories, new households) still finds it, where each replica and nightly
# actor would otherwise build it (minutes at a million products).
INDEX_HEADROOM = 2


def saves_index(weights: Dict[str, torch.Tensor], model_config: ModelConfig, ranking: Optional[dict] = None) -> bool:
    """Whether :func:`save_model_dir` saves an MF index with these weights: an MF path whose first
    stage over :data:`INDEX_HEADROOM` times its households would search one (its exact lists too
    large to cache, or too many scans of the catalog: :func:`ncf.model.ann.needed`)."""
    width = (ranking or {}).get("mf_candidates", MF_CANDIDATES)
    households, products = INDEX_HEADROOM * model_config.num_users, model_config.num_products
    return has_mf(weights) and needed(households, min(width, products - 1), products)


def save_model_dir(
    output: str,
    weights: Dict[str, torch.Tensor],
    model_config: ModelConfig,
    data: str,
    trained_through: int,
    run: str,
    metrics: Optional[Dict] = None,
    version: Optional[str] = None,
    ranking: Optional[Dict] = None,
    overwrite: bool = False,
    rows_trained_before: Optional[int] = None,
    vocab_sha256: Optional[str] = None,
    index_depth: int = BUILD_DEPTH,
    trained_rows: Optional[tuple] = None,
) -> str:
    """Writes a complete model directory beside ``output`` and swaps it in (:func:`ncf.staging.replacing`).

    A save that fails leaves the old directory as it was. When ``output`` is a symlink
    (blue/green), the new directory ``<link name>-<version>`` is written beside the link's target
    and the link repointed; the old target is kept (roll back by pointing the link at it).
    Refuses (InputError) an ``output`` that contains ``data``, or an existing non-empty one that
    is not a model directory (no ``config.json``) unless ``overwrite``.

    Args:
        trained_through: epoch seconds where the training labels ended (evaluation refuses a
            period that starts before it).
        run: ``validated`` or ``refit`` (:mod:`ncf.splits`).
        rows_trained_before: households and products first seen from then on use the tables'
            unknown row, their own rows never trained: the last cutoff, since no list holds a
            product or a household unknown at its cutoff (default: ``trained_through``).
        vocab_sha256: :func:`ncf.model.integrity.vocab_digest` of the vocabularies the weights
            were trained on; the save is refused when DATA's differ by now (preprocessed again
            into the same directory while training ran). Recorded in ``config.json`` either way.
        index_depth: efConstruction of the MF index, when one is saved (benchmarks compare depths).

    A ``validated`` or ``refit`` run also records which rows its lists held
    (:func:`ncf.data.examples.listed_rows`): the others were never trained either and rank
    with the unknown row (:attr:`ModelDir.trained_rows`). ``trained_rows``: the (users, products)
    masks of the rows a run trained, when it did not read all its lists (capped epochs, several
    workers' equal shares).

    Weights that every reader would refuse (NaN, other names, shapes or dtypes than
    ``model_config``'s) and masks that do not fit its tables are refused (ModelIntegrityError)
    before anything is written: sealed and swapped in, they replaced a good model with one no
    replica loads.
    """
    layout.DataStats(data)  # not preprocessed: refused before the lock, naming the path given
    given = f"the model to save at {output}"
    _refuse_unservable(output, lambda: check_weights(given, weights, model_config))
    _refuse_unservable(output, lambda: check_trained_rows(given, trained_rows, model_config))
    version = version or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    # Every part of the state, the stats and the lists from one directory, resolved once
    # (_one_preprocess_run): a link repointed meanwhile must not mix two preprocess runs.
    source = os.path.realpath(data)
    with (
        replacing(output, CONFIG, "model directory", [data], overwrite, wait_s=SAVE_WAIT_S, version=version) as tmp,
        said_as(tmp, output),  # a full disk's line names the output, not the stage it removes
    ):
        # torch.save turns a full disk's OSError into a RuntimeError: said as the OSError it was.
        needed = sum(t.numel() * t.element_size() for t in weights.values())
        with full_disk_said(os.path.join(tmp, WEIGHTS), needed):
            torch.save(weights, os.path.join(tmp, WEIGHTS))
        with _one_preprocess_run(data, source):
            stats = layout.DataStats(source)
            copy_state(source, os.path.join(tmp, STATE))
            copied_vocab = vocab_digest(os.path.join(tmp, STATE))  # what was copied, not what DATA holds now
            if vocab_sha256 is not None and copied_vocab != vocab_sha256:
                raise InputError(
                    f"{data}: its vocabularies changed while the model trained (jobs.preprocess into the "
                    "same --output?); the weights' rows index the old ones: train again on the new DATA"
                )
            listed = _listed_rows(source, stats, run, model_config) if trained_rows is None else trained_rows
            stats_sha256 = sha256_of(layout.stats_path(source))
        if saves_index(weights, model_config, ranking):
            _save_index(weights, model_config.num_products, tmp, index_depth)
        if listed is not None:  # checked above where given; DATA's lists are of the tables' sizes
            save_trained_rows(tmp, listed)
        write_json(
            os.path.join(tmp, CONFIG),
            {
                "format_version": FORMAT_VERSION,
                "features_version": FEATURES_VERSION,
                "version": version,
                "run": run,
                "model": dataclasses.asdict(model_config),
                "data": {
                    "path": os.path.abspath(data),
                    "boundaries": stats.boundaries,
                    "vocab_sha256": copied_vocab,
                    # The registry's lineage, as trained: DATA may be refreshed before it registers.
                    "stats_sha256": stats_sha256,
                },
                "code": code_version(),
                "trained_through": int(trained_through),
                "rows_trained_before": int(trained_through if rows_trained_before is None else rows_trained_before),
                "ranking": ranking or {},
            },
        )
        # The version ties the figures to this model (read_metrics compares it with config.json's).
        write_json(os.path.join(tmp, METRICS), {**(metrics or {}), METRICS_VERSION: version})
        write_manifest(tmp, unsealed=[METRICS])  # checksums of every file but the metrics (updated later)
    return output


def _refuse_unservable(output: str, check) -> None:
    """Runs ``check`` (an integrity check of what the save was given), its refusal saying that
    nothing was written: raised inside the save, it removes the stage and leaves ``output`` as it was."""
    try:
        check()
    except ModelIntegrityError as e:
        raise ModelIntegrityError(f"{e}; nothing saved, {output} left as it was") from None


def _save_index(weights: Dict[str, torch.Tensor], products: int, directory: str, depth: int) -> None:
    """The MF products' HNSW index, said on the console: at a million products it takes minutes
    (143 s on 2 cores), most of a model directory's save."""
    print(f"[model] building the MF products' HNSW index ({products - 1:,} products)", flush=True)
    started = time.time()
    ProductIndex.build(weights, depth).save(index_path(directory))
    print(f"[model] HNSW index built in {time.time() - started:.0f} s", flush=True)


def _listed_rows(data: str, stats: layout.DataStats, run: str, config: ModelConfig) -> Optional[tuple]:
    """The rows the run's lists held, when ``data`` has lists for ``run`` and the tables are its
    vocabularies (weights saved by hand for another shape, in tests, get none)."""
    sizes = stats.vocab_sizes or {}
    if run not in (VALIDATED, REFIT) or not stats.has_lists(run):
        return None
    if (sizes.get("num_users"), sizes.get("num_products")) != (config.num_users, config.num_products):
        return None
    return listed_rows(data, stats.cutoffs(run), config.num_users, config.num_products)


def save_untrained_model_dir(output: str, data: str, version: str, seed: int = 0, **model_options) -> str:
    """A model directory on ``data``'s vocabularies with seeded, untrained weights: for tests and
    benchmarks of serving and scoring, whose cost and mechanics do not depend on the weights.
    ``model_options`` override :class:`ModelConfig`'s defaults (sizes, switches)."""
    torch.manual_seed(seed)
    config = ModelConfig(**Vocabularies.load(layout.vocab_dir(data)).sizes(), **model_options)
    end = layout.DataStats(data).end
    return save_model_dir(
        output,
        AdvancedNCF(config).state_dict(),
        config,
        data,
        trained_through=end + 1,
        run="untrained",
        version=version,
    )


def load_model(model_dir: str, device: Optional[torch.device] = None) -> AdvancedNCF:
    """The model with its weights; refuses files that need unpickling (weights_only=True).

    The loaded tensors become the model's (:func:`model_from_weights`: no second copy). They are
    read into memory rather than memory-mapped, so a file changed on disk under a running replica
    cannot change or crash the model it serves.
    """
    config = read_config(model_dir)
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:  # said as verify_model_dir says it, with the directory
        raise InputError(f"{model_dir}: bad config.json ({one_line(e)})") from None
    state = torch.load(os.path.join(model_dir, WEIGHTS), weights_only=True, map_location="cpu")
    # Names, shapes and dtypes (a float64 file loaded, then failed at the first scoring, where
    # the API's Recommender.load verifies nothing); the values are the directory check's.
    check_weights(model_dir, state, model_config, finite=False)
    return model_from_weights(model_config, state, device)


class ModelDir:
    """A handle on a model directory: its config read once, its parts loaded on demand."""

    def __init__(self, path: str) -> None:
        # The link's target, once: a training repointing a blue/green link meanwhile must not
        # mix this config with the next model's weights, vocabularies or index.
        # Errors name the path given, not a link's target (a placeholder before any training); a
        # second read through the link could succeed on the next model and mix the two.
        self.path = os.path.realpath(path)
        self.config = read_config(self.path, named=path)

    @property
    def version(self) -> str:
        return self.config["version"]

    @property
    def trained_through(self) -> int:
        return int(self.config["trained_through"])

    @property
    def rows_trained_before(self) -> int:
        """Ids first seen from then on rank with the unknown row (directories written before the
        field existed: ``trained_through``, what they used)."""
        return int(self.config.get("rows_trained_before", self.config["trained_through"]))

    @property
    def trained_rows(self) -> Optional[tuple]:
        """(users, products) boolean masks of the rows the run's lists held, or None (an
        untrained directory, or one written before the masks existed: rows_trained_before alone)."""
        return read_trained_rows(self.path)

    @property
    def state_dir(self) -> str:
        """The copy of the training DATA's state (a directory laid out like DATA)."""
        return os.path.join(self.path, STATE)

    @property
    def ranking(self) -> Dict:
        return self.config.get("ranking", {})

    def load_model(self, device: Optional[torch.device] = None) -> AdvancedNCF:
        return load_model(self.path, device)

    def mf_index_for(self, households: int, width: int, products: int) -> Optional[ProductIndex]:
        """The saved MF index where a first stage of ``width`` products over ``households``, from a
        state of ``products``, searches one (None otherwise: exact lists; or no index saved, and the
        first stage builds one)."""
        width = min(width, int(self.config["model"]["num_products"]) - 1)  # as the save decided
        return load_if_present(self.path) if needed(households, width, products) else None

    def table_vocabularies(self) -> Vocabularies:
        """The vocabularies whose indices are the rows of the model's embedding tables."""
        return Vocabularies.load(layout.vocab_dir(self.state_dir))

    def metrics(self) -> Dict:
        """metrics.json, refused where it names another version than this handle's (a directory
        saved over since the handle resolved it: its figures are the other model's)."""
        return read_metrics(self.path, version=self.version)


def written_dir(output: str, version: str) -> str:
    """The directory a save of ``version`` to ``output`` wrote: a blue/green link's target (the
    next training repoints the link, the target stays), checked to hold ``version`` still. Another
    training saving to the same plain directory replaces it: what this run would evaluate,
    annotate or register is then that one's model, so the run is refused in one line."""
    real = os.path.realpath(output)
    held = str(read_config(real).get("version"))
    if held != str(version):
        raise InputError(
            f"{output}: another training saved model {held} there after this run saved {version}, which is "
            "gone; train into a symlink (blue/green: each training keeps its own directory) or give each "
            "training its own --output"
        )
    return real


def update_metrics(model_dir: str, extra: Dict, version: Optional[str] = None) -> Dict:
    """Adds ``extra`` to ``metrics.json`` (e.g. held-out figures measured after saving);
    ``version``: the model's they are, refused (InputError) where ``metrics.json`` names another
    (a training saved into the same directory meanwhile: its metrics took this one's figures)."""
    metrics = {**read_metrics(model_dir, version=version), **extra}
    write_json(os.path.join(model_dir, METRICS), metrics)
    return metrics

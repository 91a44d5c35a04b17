"""What scores a batch of users in the nightly job: the Ray Data actor (:class:`ScoreBatch`, or
the driver itself for a small DATA), the rows of a batch (:func:`score_users`, the same ranking
as Serve's) and its Parquet part, and the checks that the actor ranks with the MODEL and DATA the
driver started the run with (:class:`InputsChanged` otherwise: the run commits nothing).

Example::

    scorer = ScoreBatch(model, data, stage, k=10, at=at, scored_at=at, model_version="v1")
    counts = scorer(pa.table({"position": [1, 2], "user_id": ["101", "102"]}))  # one part written
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ncf.batch.partitions import REASON_TYPE, typed_ids
from ncf.data.product_stats import ProductStats
from ncf.data.vocab import Vocabulary
from ncf.device import check_gpu_usable
from ncf.errors import InputError, raised_within
from ncf.jsonio import temporary_name
from ncf.model.integrity import data_fingerprint, model_fingerprint
from ncf.rank.reasons import Reason
from ncf.rank.recommender import Recommender


class InputsChanged(RuntimeError):
    """MODEL or DATA is not what the driver read at the start of the run (replaced mid-run):
    the run fails and nothing is committed."""


def inputs_changed_in(error: BaseException) -> Optional[InputsChanged]:
    """The :class:`InputsChanged` an actor raised, its first line, found under what Ray and Ray
    Data make of it (see :func:`raised_remotely`); None when there is none."""
    return raised_remotely(error, InputsChanged)


# "ncf.errors.InputError: message", "RuntimeError: message": the line a Python traceback ends an
# exception with, as Ray puts the remote one into its own error's text (colours included).
# A bare name is an exception line only if it says so (``MemoryError``, a plain ``assert``'s
# ``AssertionError``); numpy's ``_ArrayMemoryError`` starts with an underscore.
_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*_*[A-Z]\w*)(?:: (.*)|(?<=Error)|(?<=Exception))$")
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
MAX_CAUSE_CHARS = 400  # of the cause's line in a one-line error


def remote_cause(error: BaseException) -> Tuple[str, str]:
    """(type name, message line) of what raised ``error``, from under Ray's and Ray Data's
    wrappers: the original exception where Ray attaches it (its first line), else the last
    exception line of the remote traceback Ray's text carries that is not one of Ray's own
    (``RuntimeError: node lost``; Ray Data adds its retry advice below it), else ``error``'s own
    type and last line (an actor that died: its process killed, out of memory or a lost node).
    Dotted names are shortened to the class; the line to :data:`MAX_CAUSE_CHARS`."""
    found = raised_within(error, Exception)
    if found is not None:
        lines = str(found).strip().splitlines()
        return type(found).__name__, _clipped(lines[0] if lines else "")
    text = _COLOURS.sub("", str(error))
    raised = [m for m in map(_EXCEPTION_LINE.match, text.splitlines()) if m and not m.group(1).startswith("ray.")]
    if raised:
        return raised[-1].group(1).rsplit(".", 1)[-1], _clipped(raised[-1].group(2) or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return type(error).__name__, _clipped(lines[-1] if lines else "")


def _clipped(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MAX_CAUSE_CHARS else line[: MAX_CAUSE_CHARS - 3] + "..."


def input_error_in(error: BaseException) -> Optional[InputError]:
    """The :class:`ncf.errors.InputError` (or a subclass) an actor raised, its first line, found
    under what Ray wraps it in (see :func:`raised_remotely`); None when there is none."""
    return raised_remotely(error, InputError)


def raised_remotely(error: BaseException, kind: type) -> Optional[BaseException]:
    """The ``kind`` (or a subclass of it) an actor raised, as one line: the exception where Ray
    attaches it, else made again from the remote traceback's last line naming one of this code
    base's subclasses of ``kind``. Ray Data's actors hand the driver a ``UserCodeException``
    whose message is the actor's traceback, the exception itself not attached. None when there
    is none."""
    found = raised_within(error, kind)
    if found is not None:
        lines = str(found).strip().splitlines()
        return found if len(lines) == 1 else _made(type(found), lines[0] if lines else type(found).__name__, kind)
    for match in reversed([m for m in map(_EXCEPTION_LINE.match, _COLOURS.sub("", str(error)).splitlines()) if m]):
        named = _our_class(match.group(1))
        if named is not None and issubclass(named, kind):
            return _made(named, (match.group(2) or named.__name__).strip(), kind)
    return None


def _made(named: type, message: str, fallback: type) -> BaseException:
    """``named(message)``, or ``fallback(message)`` where ``named`` takes other arguments."""
    try:
        return named(message)
    except TypeError:
        return fallback(message)


def _our_class(dotted: str) -> Optional[type]:
    """The exception class a traceback's dotted name gives, where it is this code base's."""
    module, _, name = dotted.rpartition(".")
    if not module.startswith("ncf."):
        return None
    try:
        kind = getattr(sys.modules.get(module) or importlib.import_module(module), name, None)
    except Exception:  # whatever importing it raised, the job's own line stays the error
        return None
    return kind if isinstance(kind, type) and issubclass(kind, BaseException) else None


def replaced_note(what: str) -> str:
    """The end of the line a run replaced inputs fail it with."""
    return f"{what} was replaced during the run; nothing committed, rerun the date"


def check_model_version(recommender: Recommender, expected: str) -> None:
    """Raises unless the actor loaded the model version the driver recorded: the manifest and
    every row name that version."""
    if recommender.version != expected:
        raise InputsChanged(
            f"the model is version {recommender.version!r}, the run started with {expected!r}: {replaced_note('MODEL')}"
        )


def input_fingerprints(model: str, data: str) -> Tuple[str, str]:
    """What identifies MODEL's and DATA's content (:func:`ncf.model.integrity.model_fingerprint`,
    :func:`~ncf.model.integrity.data_fingerprint`), recorded by the driver when the run starts."""
    return model_fingerprint(model), data_fingerprint(data)


def check_inputs_unchanged(
    model: str, data: str, recorded: Tuple[str, str], recorded_as: str = "the run started with"
) -> None:
    """Raises unless MODEL and DATA are still what the driver recorded, read after an actor
    loaded them: one written at the same path meanwhile (or while the actor read its files one
    by one, mixing the old and the new) would rank under the recorded version. ``recorded_as``:
    what the recorded fingerprints are, in the message."""
    model_now, data_now = input_fingerprints(model, data)
    if model_now != recorded[0]:
        raise InputsChanged(f"MODEL's manifest is not the one {recorded_as}: {replaced_note('MODEL')}")
    if data_now != recorded[1]:
        raise InputsChanged(f"DATA's stats.json is not the one {recorded_as}: {replaced_note('DATA')}")


def changed_inputs(model: str, data: str, recorded: Tuple[str, str]) -> Optional[InputsChanged]:
    """The :class:`InputsChanged` :func:`check_inputs_unchanged` raises, or None; a MODEL whose
    fingerprint no longer reads (its config.json gone: a swap between its two renames) changed too.
    For a process that read both at the start (the driver): an actor's node may not mount them."""
    try:
        check_inputs_unchanged(model, data, recorded)
    except InputsChanged as changed:
        return changed
    except (InputError, OSError, ValueError) as e:  # read_config's refusal, a file gone between two reads
        lines = str(e).strip().splitlines()
        cause = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        return InputsChanged(f"MODEL no longer reads as the run started ({cause}): {replaced_note('MODEL')}")
    return None


def load_recommender(model: str, data: str, device, inputs: Optional[Tuple[str, str]] = None) -> Recommender:
    """``Recommender.load`` of the run's MODEL and DATA; where it raises and ``inputs`` (the
    driver's fingerprints) no longer match what this node sees, :class:`InputsChanged` instead:
    a DATA swapped in mid-run that the load refuses (an InputError, exit 2: bad input) or reads
    half-written (a failure a rerun would continue past, though it discards the parts) is the
    run's inputs changed (exit 1). A node that sees neither directory cannot tell: the error stands."""
    try:
        return Recommender.load(model, data=data, device=device)
    except Exception as error:
        if inputs is None or not (os.path.isdir(model) and os.path.isdir(data)):
            raise
        changed = changed_inputs(model, data, inputs)
        if changed is None:
            raise
        raise changed from error


def check_positions(vocab: Vocabulary, user_ids: pa.Array, positions: np.ndarray) -> None:
    """Raises unless ``positions`` index ``user_ids`` in ``vocab``. The driver reads the pairs once,
    an actor loads the vocabulary again, and every preprocess may order it anew: ranking one
    household under another's id would pass every count."""
    in_range = len(positions) == 0 or (positions.min() >= 1 and positions.max() < len(vocab))
    if len(positions) != len(user_ids) or not in_range:
        raise InputsChanged(
            f"{len(positions)} positions for {len(user_ids)} users, vocabulary of {len(vocab) - 1}: "
            + replaced_note("DATA")
        )
    found = vocab.ids.take(pa.array(positions - 1))
    same = pc.equal(found, user_ids.cast(pa.string()))
    if not pc.all(same).as_py():
        first = int(np.flatnonzero(~same.to_numpy(zero_copy_only=False))[0])
        raise InputsChanged(
            f"user {user_ids[first].as_py()!r} is at position {int(positions[first])} of the run's user table, "
            f"where the vocabulary now has {found[first].as_py()!r}: {replaced_note('DATA')}"
        )


def score_users(
    recommender: Recommender,
    user_ids: pa.Array,
    k: int,
    at: int,
    scored_at: int,
    positions: Optional[np.ndarray] = None,
    explain: bool = False,
) -> pa.Table:
    """Top-``k`` rows per user, ranked exactly as :meth:`Recommender.recommend` ranks them (the one
    ranking path, many households per model call). ``positions``: the users' indices in the
    recommender's vocabulary when the caller has them (the nightly job reads them with the ids),
    which spares a lookup among every id; they are checked against the ids (cheaper than the lookup).
    ``explain``: with a ``reason`` column (:func:`reason_column`).

    Raises:
        InputsChanged: ``positions`` do not index ``user_ids`` in the recommender's vocabulary.
        RuntimeError: when a user's ranking is shorter than ``k`` (the job promises K rows).
    """
    if positions is None:
        indices = recommender.vocabs.users.index_of(user_ids)
    else:
        indices = np.asarray(positions, np.int64)
        check_positions(recommender.vocabs.users, user_ids, indices)
    # The reasons without the attention's weights: the same scores, so the same lists, as a plain run.
    rankings = recommender.ranker.rank(indices, np.full(len(indices), at), k, reasons=explain)
    for raw, ranking in zip(user_ids.to_pylist(), rankings):
        if len(ranking.products) != k:
            raise RuntimeError(f"user {raw!r}: {len(ranking.products)} products ranked, {k} expected")
    n = len(indices)
    cold = np.array([r.cold_start for r in rankings], bool)
    product_index = np.concatenate([r.products for r in rankings]) if rankings else np.zeros(0, np.int64)
    scores = np.concatenate([r.scores for r in rankings]) if rankings else np.zeros(0, np.float32)
    vocab = recommender.vocabs.products
    table = pa.table(
        {
            "user_id": user_ids.take(pa.array(np.repeat(np.arange(n), k))),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n)),
            "product_id": typed_ids(vocab, vocab.ids.take(pa.array(product_index - 1))),
            "score": pa.array(scores.astype(np.float32)),
            # A household without purchases before the moment: the popular products at that hour.
            "cold_start": pa.array(np.repeat(cold, k)),
            "model_version": pa.repeat(pa.scalar(recommender.version, pa.string()), n * k),
            # Milliseconds: Parquet has no seconds unit, so readers would see ms anyway.
            "scored_at": pa.array(np.full(n * k, scored_at * 1000, np.int64)).cast(pa.timestamp("ms", tz="UTC")),
        }
    )
    return table.append_column("reason", reason_column([r.reasons for r in rankings], k)) if explain else table


def reason_column(reasons: Sequence[Optional[Sequence[Reason]]], k: int) -> pa.Array:
    """Each ranking's :class:`ncf.rank.reasons.Reason` per row, as :data:`REASON_TYPE` (``k`` nulls
    for a ranking without reasons: a cold start's popular products owe nothing to its purchases)."""
    rows: List[Optional[Dict]] = []
    for ranked in reasons:
        rows += [None] * k if ranked is None else [reason.as_dict() for reason in ranked]
    return pa.array(rows, REASON_TYPE)


def part_name(positions: np.ndarray) -> str:
    """A batch's part file, named by its first user: a retried batch overwrites its part instead
    of adding one, and a run continuing a dead one's parts knows which batches are done."""
    return f"part-{int(positions.min()):010d}.parquet"


_PART_NAME = re.compile(r"^part-(\d+)\.parquet$")


def part_position(name: str) -> Optional[int]:
    """The first position the part file ``name`` holds (:func:`part_name`); None for another name."""
    match = _PART_NAME.match(name)
    return int(match.group(1)) if match else None


def write_part(table: pa.Table, stage: str, name: str) -> str:
    """Writes one part under a hidden name of its own and renames it, so a part is whole or
    absent, even where a leftover actor of a killed run writes the same batch into the stage the
    next run continues (both write the same plan's part; a name of the process id alone was
    shared by two actors of one pid on two nodes, or containers, and their writes interleaved).

    The stage directory must exist: a leftover actor of a killed run then fails instead of
    recreating a directory the next run has cleaned.
    """
    final = os.path.join(stage, name)
    hidden = temporary_name(final)
    pq.write_table(table, hidden)
    os.replace(hidden, final)
    return final


def check_stage_visible(stage: str) -> None:
    """Raises (InputError, one line) unless the run's stage is a directory here: an actor on a
    node that does not mount OUT would fail at its first part ("Failed to open local file"), its
    traceback the run's only word. The stage is ``OUT/_tmp/run_date=D/RUN``, made by the driver."""
    if not os.path.isdir(stage):
        output = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(stage))))
        raise InputError(
            f"OUT {output} is not visible on this node ({socket.gethostname()}: no {stage}): it must be on "
            "storage every node mounts"
        )


def scoring_device(use_gpu: bool):
    """The torch device an actor scores on. ``use_gpu`` was decided from the build the cluster
    shares (torch.version.cuda) and Ray's count of GPUs, which it takes from the hardware: a node
    whose NVIDIA driver is older than the build's CUDA (or missing) passes both, and every actor
    then failed on its first tensor with a CUDA traceback. Refused (InputError, one line) here."""
    import torch

    if not use_gpu:
        return torch.device("cpu")
    check_gpu_usable("score with --gpu no")
    return torch.device("cuda")


class ScoreBatch:
    """Ray Data actor: loads the recommender once, then scores and writes one part per batch.

    Returns one row per batch (``part``, ``users``, ``rows``) for the driver's progress and
    checks. ``model_version`` and ``inputs``: the version and fingerprints the driver recorded;
    the actor loads MODEL and DATA again, so it checks that they are still what the driver read
    (version and fingerprints once loaded, each batch's users in :func:`score_users`) and fails
    the run otherwise.
    """

    def __init__(
        self,
        model: str,
        data: str,
        stage: str,
        k: int,
        at: int,
        scored_at: int,
        model_version: str,
        use_gpu: bool = False,
        compile_model: bool = False,
        replay_stats: Optional[ProductStats] = None,
        explain: bool = False,
        inputs: Optional[Tuple[str, str]] = None,
    ) -> None:
        check_stage_visible(stage)  # before the model loads: seconds, for a run that cannot write
        device = scoring_device(use_gpu)
        loaded = load_recommender(model, data, device, inputs)
        check_model_version(loaded, model_version)
        if inputs is not None:
            check_inputs_unchanged(model, data, inputs)
        if replay_stats is not None and replay_stats.num_products != loaded.state.num_products:
            raise InputsChanged(
                f"the run's product stats count {replay_stats.num_products} products, DATA now "
                f"{loaded.state.num_products}: {replaced_note('DATA')}"
            )
        # A moment inside the data: a replay of what was known then, from the products' stats the
        # driver computed once for every actor (each would have read every purchase for them).
        self.recommender = loaded.as_of(at, replay_stats)
        if compile_model:
            self.recommender.ranker.compile()
        self.stage, self.k, self.at, self.scored_at, self.explain = stage, k, at, scored_at, explain

    def __call__(self, batch: pa.Table) -> Dict[str, np.ndarray]:
        positions = batch.column("position").to_numpy()
        user_ids = batch.column("user_id").combine_chunks()
        table = score_users(self.recommender, user_ids, self.k, self.at, self.scored_at, positions, self.explain)
        name = part_name(positions)
        write_part(table, self.stage, name)
        return {
            "part": np.array([name]),
            "users": np.array([len(positions)]),
            "rows": np.array([table.num_rows]),
            "cold_start_users": np.array([int(pc.sum(table.column("cold_start")).as_py() or 0) // self.k]),
        }

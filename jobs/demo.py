"""python -m jobs.demo: the main job on the default dataset (what `make demo` runs).

On a local Ray cluster: preprocesses Complete Journey with Ray Data; trains AdvancedNCF with
Ray Train twice: the *validated* model (labels end where the validation weeks start) and the
*deployment* model (refit on labels through the data's last day with the epochs the validated
run chose); evaluates the validated model against the baselines on the held-out weeks (it never
saw them) and writes the HTML report; batch-scores every household with the deployment model
from the histories through the data's end; deploys it on Ray Serve on 127.0.0.1 and sends a
few online queries; then prints the results table and where everything went, and shuts down.

Submitted to a cluster (``RAY_ADDRESS`` set), everything it writes goes under ``--workdir``,
which must be storage every node mounts: the dataset's cache, Ray Train's checkpoints and the
MLflow store too (unless ``MLFLOW_TRACKING_URI`` names one), whose defaults under
``artifacts/`` would be in the job's unpacked working directory on the head alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Optional

from jobs import batch_score, evaluate, preprocess, train
from jobs.cli import (
    EXIT_BAD_INPUT,
    EXIT_STOPPED,
    exit_status,
    fail,
    init_ray,
    job_parser,
    one_line_errors,
    positive_int,
    refuse_empty_name,
    refuse_empty_paths,
    run_main,
    tcp_port,
    unpacked_path,
)
from ncf.batch.commit import is_scoring_output
from ncf.batch.partitions import partition_dir
from ncf.cluster import joins_a_cluster
from ncf.data import layout
from ncf.data.features import FEATURES_VERSION
from ncf.data.vocab import Vocabularies
from ncf.errors import InputError, os_error_words
from ncf.evaluate.report import CONSOLE_COLUMNS, PAIRED_SE, cell_text, failed_text, write_not_evaluated
from ncf.evaluate.report_inputs import read_ablation_rows
from ncf.jsonio import write_text
from ncf.model.directory import ModelDir
from ncf.registry import check_store_outlives_the_job, in_unpacked_working_dir, sqlite_uri
from ncf.staging import present
from serve.launch import (
    APP_NAME,
    LOCAL,
    base_url,
    check_port_free,
    running_address,
    serve_logs_dir,
    start,
    start_failure_reason,
    wait_until_healthy,
)

STAGES = 6
# Six trainings are too long for the demo; bench.ablations' rows on Complete Journey are kept
# here, in the repository, wherever the demo runs from.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDED_ABLATIONS = os.path.join(REPO, "bench", "results", "ablations_cj.jsonl")
# How long Serve may take to run the demo's app: a replica's model loads in seconds here; on a
# cluster the demo joined, an autoscaler's node may come first.
SERVE_START_TIMEOUT_S = 300.0
SERVE_HEALTHY_TIMEOUT_S = 120.0


_current_stage = ""  # the stage a Ctrl-C stops, for its one line
_current_number = 0
_run_name = ""  # the training's run name the demo chose: its advice names it
_options: list = []  # the options the demo was given that its advice repeats (way_on_options)
PRINTED_ANSWER_CHARS = 600


def _stage(number: int, name: str, started: float) -> None:
    global _current_stage, _current_number
    _current_stage, _current_number = f"{number}/{STAGES} {name}", number
    print(f"\n=== {_current_stage} ({time.time() - started:.0f} s so far) ===", flush=True)


def how_to_go_on(stage: int, name: str, options: list = ()) -> str:
    """The demo's own command for going on after a stage's job ended it: the job's line says
    "the same command", which is the job's, not `make demo`. ``options``: the run's own
    (:func:`way_on_options`): without them another --workdir or --epochs went on in the default's."""
    if stage <= 1:
        return f"{make_demo(options)} preprocesses again"
    if stage == 2:
        return f"{make_demo([*options, '--reuse-data', '--name', name])} resumes the training from its checkpoints"
    return f"{make_demo([*options, '--reuse-data'])} goes on from the preprocessed data (it trains again)"


def make_demo(options: list) -> str:
    """`make demo` with ``options`` in DEMO_ARGS, quoted for a shell (make hands them to one), a
    ``$`` doubled for make (which expands a variable's ``$`` first)."""
    if not options:
        return "make demo"
    words = shlex.join(options).replace("$", "$$")
    plain = not any(c in words for c in '"$`\\')  # nothing a shell's double quotes would change
    return f'make demo DEMO_ARGS="{words}"' if plain else f"make demo DEMO_ARGS={shlex.quote(words)}"


def way_on_options(args: argparse.Namespace) -> list:
    """The options of ``args`` set to other than their defaults that a way on repeats (it adds
    --reuse-data and --name itself); paths made absolute, since `make demo` runs in the
    repository, not where this run started."""
    defaults = parse_args([])
    options = []
    for dest in ("workdir", "epochs", "port", "ablations"):
        value = getattr(args, dest)
        if value != getattr(defaults, dest):
            options += [f"--{dest}", os.path.abspath(value) if dest in ("workdir", "ablations") else str(value)]
    return options


def print_table(rows: list) -> None:
    """The report's main table, its columns a terminal has room for, figured as the report does
    (to 4 decimals: at full precision a figure overflowed its column and shifted every cell after
    it); a baseline's difference to the model, household by household, \u00b1 its paired standard error."""
    lines = [_cells(row) for row in rows]
    # Each column as wide as its widest cell: "decayed_frequency" is longer than its header.
    widths = [max(15, len(c), *(len(cells[i]) for cells in lines)) for i, c in enumerate(CONSOLE_COLUMNS)]
    for cells in [CONSOLE_COLUMNS, *lines]:
        print(" | ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths)), flush=True)


def _cells(row: dict) -> list:
    """A row's cells; a baseline that failed says where, as the report does, instead of blanks."""
    if "failed" in row:
        return [str(row.get("model", "")), failed_text(row)] + [""] * (len(CONSOLE_COLUMNS) - 2)
    return [cell_text(row, c, PAIRED_SE) for c in CONSOLE_COLUMNS]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with LOCAL.open(request, timeout=30) as response:
        return json.load(response)


def query_failed(route: str, error: Exception) -> str:
    """The one line for a Serve query of the demo's that failed: the server's own answer where it
    gave one (a 500's body says which part failed), else the connection's reason."""
    if isinstance(error, urllib.error.HTTPError):
        body = error.read(300).decode(errors="replace").strip()
        reason = f"HTTP {error.code}: {' '.join(body.split())}" if body else f"HTTP {error.code}"
    else:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return f"{route} failed ({reason}); Serve's logs: {serve_logs_dir()}"


def printable(answer: dict) -> str:
    """An answer as JSON, cut at :data:`PRINTED_ANSWER_CHARS` with a word that it was."""
    text = json.dumps(answer)
    if len(text) <= PRINTED_ANSWER_CHARS:
        return text
    return f"{text[:PRINTED_ANSWER_CHARS]}... ({len(text) - PRINTED_ANSWER_CHARS} more characters)"


def stop_app(app_name: str) -> None:
    """Stops the app: its replicas drain and exit. Serve's controller and proxy stop with the
    demo's local cluster (``ray.shutdown``); ``serve.shutdown()`` here would have the controller
    kill itself inside the call that asked it to, which Ray reports as a failed task
    ("ServeController.graceful_shutdown failed ... killed by ray.kill") at the end of every
    successful demo. On a cluster that outlives the demo (RAY_ADDRESS), Serve is shut down."""
    from ray import serve

    if running_address() is None:  # Serve never started (or is gone): nothing to stop, nothing to ask it
        return
    serve.delete(app_name)
    if joins_a_cluster():
        serve.shutdown()


def check_no_serve_running() -> None:
    """Refuses (InputError, one line) a cluster whose Serve already runs: the demo's app would
    replace one of the same name, keep that Serve's address whatever ``--port`` says, and the
    demo shuts Serve down, every app of it, when it ends."""
    running = running_address()
    if running is not None:
        raise InputError(
            f"Serve already runs on this cluster ({base_url(*running)}): the demo deploys an app of its own and "
            "shuts Serve down at its end; run the demo on another cluster, or locally (without RAY_ADDRESS)"
        )


def online_queries(model: str, data: str, port: int) -> list:
    """Deploys the Serve app on 127.0.0.1, asks it a few questions, and stops it."""
    from serve.app import build_app

    with one_line_errors():
        # Checked at the start too; something may have taken the port, or started Serve (which
        # stop_app would then shut down), in the minutes since.
        check_port_free("127.0.0.1", port, "stop it or give the demo another --port")
        if joins_a_cluster():
            check_no_serve_running()
        # Complete Journey ends in 2017, so requests default to the data's end rather than now.
        app = build_app({"model": model, "data": data, "default_at": "data-end", "min_replicas": 1, "max_replicas": 2})
    # Inside the try: a deploy that fails or is interrupted halfway still stops the app, and on a
    # cluster the Serve it started, which the next demo would otherwise refuse to run beside.
    try:
        url, health = _serving(app, port)
        expected = ModelDir(model).version
        if health.get("model_version") != expected:
            with one_line_errors():
                raise InputError(
                    f"{url} answers with model {health.get('model_version')}, not the demo's {expected}: another "
                    "server took the port? stop it or give the demo another --port"
                )
        print(f"serving {url} (OpenAPI at {url}/openapi.json): {json.dumps(health)}", flush=True)
        users = Vocabularies.load(layout.vocab_dir(data)).users.raw_of([1, 2])
        questions = [
            ("/recommend (explained)", "/recommend", {"user_id": users[0], "k": 3, "explain": True}),
            ("/recommend (unknown household: cold start)", "/recommend", {"user_id": "new-household", "k": 3}),
            ("/recommend/batch", "/recommend/batch", {"user_ids": [users[0], users[1]], "k": 3}),
            ("/score", "/score", None),  # the first recommendation's score for the second household
        ]
        answers = []
        for label, route, payload in questions:
            try:
                if payload is None:
                    payload = {"user_id": users[1], "product_ids": [answers[0][1]["items"][0]["product_id"]]}
                answers.append((label, post(f"{url}{route}", payload)))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:  # URLError and HTTPError are OSErrors
                fail(query_failed(label, e))
            print(f"{label}: {printable(answers[-1][1])}", flush=True)
        return answers
    finally:
        stop_app(APP_NAME)


def _serving(app, port: int) -> tuple:
    """(url, /healthz's answer) of ``app`` started on 127.0.0.1:``port``; a failure ends the demo
    in one line, as jobs.deploy's does, naming Serve's logs."""
    try:
        # Serve's own logs go to its files (RAY_SERVE_LOG_TO_STDERR=0): a line, so the wait is not silent.
        print(
            f"[demo] starting Serve on 127.0.0.1:{port} and waiting for its replicas (up to "
            f"{SERVE_START_TIMEOUT_S:.0f} s for them to start, then {SERVE_HEALTHY_TIMEOUT_S:.0f} s for /healthz)",
            flush=True,
        )
        url = start(app, host="127.0.0.1", port=port, start_timeout_s=SERVE_START_TIMEOUT_S)
        return url, wait_until_healthy(url, timeout_s=SERVE_HEALTHY_TIMEOUT_S)
    except InputError as e:  # the address answers, but not as the demo's app
        fail(str(e), exit_status(e))
    except TimeoutError as e:  # the replicas did not come up: their logs say why
        fail(f"{e}; Serve's logs: {serve_logs_dir()}")
    except RuntimeError as e:  # the replicas failed to start (DEPLOY_FAILED), or the proxy to bind
        fail(f"Serve could not start the app ({start_failure_reason(e)}); Serve's logs: {serve_logs_dir()}")


def support_paths(workdir: str) -> dict:
    """Where the dataset's cache and Ray Train's checkpoints go: under ``workdir`` on a cluster
    the job joined (its workers on other nodes read them), the jobs' own defaults locally."""
    if not joins_a_cluster():
        return {}
    if in_unpacked_working_dir(workdir):
        # Submitted with --working-dir: its default (relative) --workdir is in Ray's unpacked copy,
        # deleted after the job with the models, the report and the MLflow store in it.
        raise InputError(f"{unpacked_path('--workdir', workdir)} (cluster.yaml: --workdir /mnt/shared/demo)")
    if not os.path.isabs(workdir):
        print(
            f"[demo] WARNING: --workdir {workdir} is relative: {os.path.abspath(workdir)} is on this node alone "
            "unless every node mounts it; give a path on storage every node mounts (cluster.yaml: /mnt/shared/demo)",
            flush=True,
        )
    return {
        "--cache": os.path.abspath(os.path.join(workdir, "datasets")),
        "--storage": os.path.abspath(os.path.join(workdir, "ray_results")),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser("demo", "The whole path on Complete Journey.", uses_ray=True)
    p.add_argument("--workdir", default="artifacts/demo", help="where the data, models, report and scores go")
    p.add_argument("--epochs", type=positive_int, default=3, help="training epochs at most")
    p.add_argument("--port", type=tcp_port, default=8000, help="Serve's port on 127.0.0.1 (checked free at the start)")
    p.add_argument(
        "--ablations",
        default=os.path.relpath(RECORDED_ABLATIONS),
        help="bench.ablations rows shown in the report, the committed Complete Journey rows by default (a local "
        "run's results.jsonl may hold another dataset's or code's rows)",
    )
    p.add_argument(
        "--reuse-data",
        action="store_true",
        help="keep DATA if a previous run preprocessed Complete Journey there with this code's feature definitions "
        "and the settings the demo asks for",
    )
    p.add_argument(
        "--name",
        default=None,
        help="the training's run name (default: train-<UTC date-time>); the name an interrupted demo printed "
        "resumes its training from the checkpoints",
    )
    return p.parse_args(argv)


def check_demo_outputs(
    data: str, model: str, validated: str, recommendations: str, report: str, evaluation: str = ""
) -> None:
    """Refuses, before any work, a WORKDIR/data, model, recommendations or report path that holds
    something no demo wrote, or an ``evaluation`` (rows file) that is no file: the jobs would
    refuse it after minutes, advising an --overwrite the demo has not."""
    how = "move it aside or give the demo another --workdir"
    if evaluation and os.path.lexists(evaluation) and not os.path.isfile(evaluation):
        raise InputError(f"{evaluation}: exists and is not a file; {how}")
    if os.path.isdir(recommendations) and not is_scoring_output(recommendations):
        raise InputError(f"{recommendations}: is not empty and holds no batch scoring the demo ran; {how}")
    for path in (recommendations, report):
        if os.path.lexists(path) and not os.path.isdir(path):
            raise InputError(f"{path}: exists and is not a directory; {how}")
    for path, marker, what in (
        (data, layout.stats_path(data), "preprocessed data"),
        (model, os.path.join(model, "config.json"), "model directory"),
        (validated, os.path.join(validated, "config.json"), "model directory"),
    ):
        if os.path.islink(path) or not os.path.lexists(path) or os.path.exists(marker):
            continue  # a link is judged by the job (its target is never deleted); none yet; the demo's own
        if not os.path.isdir(path) or os.listdir(path):
            raise InputError(f"{path}: is not {what} a demo wrote (no {os.path.basename(marker)}); {how}")


def model_links(*outputs: str) -> None:
    """Makes each output a blue/green symlink (:mod:`ncf.staging`) when nothing is there yet:
    each run's model then keeps a directory of its own beside the link, so the versions a rerun
    registers never replace the directory of one registered before (the registry could no longer
    resolve it, ``current`` included). The link points nowhere until the first training. A plain
    directory an older demo left is replaced in place as before, which is said."""
    for output in outputs:
        # A dead run's half-done replacement finished first: a link put where its directory is
        # missing would stop the swap's roll-forward (final, stage and parked all there).
        if not present(output) and not os.path.lexists(output):
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            os.symlink(f".{os.path.basename(output)}-unset", output)
        elif not os.path.islink(output):
            print(
                f"[demo] {output} is a plain directory (an older demo's): this run replaces it, and the registry can "
                "no longer resolve the version it held; remove it for blue/green links from the next run on",
                flush=True,
            )


def why_not_reusable(data: str, preprocess_argv: list) -> Optional[str]:
    """Why DATA is not what ``jobs.preprocess preprocess_argv`` would write now, in words; None
    when it is: the same feature definitions, settings (its ``stats.json`` records them) and
    dataset files, with training lists."""
    stats_file = layout.stats_path(data)
    if not os.path.exists(stats_file):
        return f"no {stats_file}"
    asked = preprocess.parse_args(preprocess_argv)
    # Through JSON, as stats.json holds it (tuples become lists).
    expected = json.loads(json.dumps(asdict(preprocess.preprocess_config(asked))))
    dataset, _ = preprocess.built_in(asked)
    try:
        return layout.DataStats(data).differences(expected, dataset, FEATURES_VERSION)
    except (InputError, OSError, ValueError, TypeError, AttributeError) as e:  # cut short, not JSON, another shape
        return f"{stats_file} is unreadable ({e})"


def model_version(path: str) -> Optional[str]:
    """The version of the model directory at ``path`` (a link's target), None where none reads."""
    try:
        return ModelDir(path).version
    except (InputError, OSError, ValueError, KeyError):
        return None


def not_evaluated(version: str, report: str, rows_file: str) -> None:
    """The report and rows of the model the validated output held before, replaced by a page
    saying its new model (``version``) is not evaluated and no rows: this run's training replaced
    the model, then stopped before the evaluation (the refit failed or was stopped after the
    validated export), and the previous run's figures would pass for the new model's. A failure
    here is said, not raised: the training's own error is under way."""
    try:
        write_not_evaluated(report, version)
        write_text(rows_file, "")
    except OSError as e:
        print(f"[demo] could not mark {report} as not evaluated ({e})", file=sys.stderr, flush=True)


def evaluated(argv: list, rows_file: str) -> list:
    """jobs.evaluate's rows, written to ``rows_file`` beside its report, also when it stops
    halfway (a row failed, Ctrl-C): the rows computed then replace the previous run's, which are
    about another model. When none was computed the file is emptied (replaced whole): no row of
    this run, and none of the previous run's shown as this run's. The report is as jobs.evaluate
    left it: its placeholder once the inputs were checked (the model, DATA, the model held out);
    a refusal of them, or Ctrl-C before then, leaves the previous run's report there."""
    computed: list = []
    rows = None
    try:
        rows = evaluate.main(argv, on_row=computed.append)
        return rows
    except SystemExit as ended:
        # A baseline's failed row (jobs.evaluate said which, exit 1): the model's row stands, and
        # the deployment model is scored and served all the same; the demo fails at its end.
        model_row = next((row for row in computed if row.get("model") == "advanced_ncf"), None)
        if ended.code == 1 and model_row is not None and "failed" not in model_row:
            if any("failed" in row for row in computed):
                print(
                    "[demo] going on with the deployment model; the failed rows are said again at the end",
                    file=sys.stderr,
                    flush=True,
                )
                rows = computed
                return rows
        raise
    finally:
        under_way = sys.exc_info()[1]
        kept = computed if rows is None else rows
        try:
            write_text(rows_file, "".join(json.dumps(row) + "\n" for row in kept))
        except OSError as e:
            if under_way is None:  # the demo's result: its previous run's rows would pass for this run's
                raise
            # Never in place of the error or stop already under way.
            print(f"[demo] could not write {rows_file} ({os_error_words(e)})", file=sys.stderr, flush=True)


def main(argv=None) -> list:
    global _current_stage, _current_number, _run_name, _options
    _current_stage, _current_number = "", 0
    args = parse_args(argv)
    name = args.name or time.strftime("train-%Y%m%d-%H%M%S", time.gmtime())  # chosen here: the advice names it
    _run_name, _options = name, way_on_options(args)
    started = time.time()
    data, model = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "model")
    validated = model + "-validated"
    report, recommendations = os.path.join(args.workdir, "report"), os.path.join(args.workdir, "recommendations")
    evaluation = os.path.join(args.workdir, "evaluation.jsonl")
    # The demo prints the answers of its few queries itself; Serve's controller, proxy and
    # per-request access logs go to Serve's log files (printed at the end), not into its output.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    with one_line_errors():
        refuse_empty_paths(args, ("--workdir",))
        refuse_empty_name(args.name)
        check_demo_outputs(data, model, validated, recommendations, report, evaluation)
        shared = support_paths(args.workdir)
        if shared:
            os.environ.setdefault("MLFLOW_TRACKING_URI", sqlite_uri(os.path.join(args.workdir, "mlflow.db")))
        check_store_outlives_the_job()  # a store named in Ray's unpacked copy: refused now, not after preprocessing
        # Now, not after ten minutes of preprocessing and training.
        check_port_free("127.0.0.1", args.port, "stop it or give the demo another --port")
        read_ablation_rows(args.ablations)  # its rows are read again by the report
        init_ray()
    import ray

    try:
        if joins_a_cluster():
            with one_line_errors():
                check_no_serve_running()
        _stage(1, "preprocess Complete Journey (Ray Data)", started)
        preprocess_argv = ["--dataset", "completejourney", "--output", data]
        preprocess_argv += ["--cache", shared["--cache"]] if shared else []
        not_reusable = why_not_reusable(data, preprocess_argv) if args.reuse_data else None
        if args.reuse_data and not_reusable is None:
            print(f"reusing {data}", flush=True)
        else:
            if not_reusable:
                print(f"[demo] not reusing DATA: {not_reusable}", flush=True)
            preprocess.main(preprocess_argv)

        _stage(2, "train AdvancedNCF (Ray Train): the validated model, then the deployment refit", started)
        model_links(model, validated)
        validated_before = model_version(validated)
        try:
            train.main(
                [
                    "--data",
                    data,
                    "--output",
                    model,
                    "--validated-output",
                    validated,
                    "--epochs",
                    str(args.epochs),
                    "--refit",
                    *(["--storage", shared["--storage"]] if shared else []),
                    "--name",
                    name,
                ]
            )
        except BaseException:
            exported = model_version(validated)
            if exported not in (None, validated_before):  # the refit failed after the validated export
                not_evaluated(exported, report, evaluation)
            raise

        _stage(3, "evaluate the validated model on the held-out weeks against the baselines; HTML report", started)
        rows = evaluated(
            ["--model", validated, "--data", data, "--report", report, "--ablations", args.ablations], evaluation
        )

        _stage(4, "batch-score every household with the deployment model (--score-in auto)", started)
        scored = batch_score.main(
            [
                "--model",
                model,
                "--data",
                data,
                "--output",
                recommendations,
                "--k",
                "10",
                "--at",
                "data-end",
                "--verify",
                "20",
            ]
        )

        _stage(5, "deploy the deployment model on Serve (127.0.0.1) and query it", started)
        online_queries(model, data, args.port)

        _stage(6, "results", started)
        print_table(rows)
        failed = [row for row in rows if "failed" in row]
        print("\nartefacts:")
        for what, path in [
            ("preprocessed data", data),
            ("validated model (evaluated)", validated),
            ("deployment model (served)", model),
            ("evaluation (JSON lines)", evaluation),
            ("report", os.path.join(report, "report.html")),
            ("recommendations", partition_dir(recommendations, scored["run_date"])),
            ("Serve logs", serve_logs_dir()),  # before ray.shutdown, which forgets the session
        ]:
            print(f"  {what:<28} {os.path.abspath(path)}")
        if failed:
            fail(
                f"stage 3/{STAGES}: {len(failed)} of {len(rows)} evaluation rows failed ("
                + "; ".join(f"{row['model']} in its {row['failed']}" for row in failed)
                + f"); every other stage ran, in {time.time() - started:.0f} s"
            )
        print(f"demo finished in {time.time() - started:.0f} s", flush=True)
        return rows
    except SystemExit as ended:
        if ended.code not in (None, 0, EXIT_BAD_INPUT) and 0 < _current_number < STAGES:  # 6: the demo's own
            print(f"[demo] {_stopped_at(ended.code)}", file=sys.stderr, flush=True)
        raise
    finally:
        ray.shutdown()


def run(argv=None) -> None:
    """:func:`main`, a Ctrl-C ending it in one line naming the stage and exit 130 (training says
    its own line and exits 130 itself; the other stages here), and a disk full or closed to this
    account (ENOSPC, EACCES, ...) in one line naming the file, exit 1, not a traceback."""
    run_main(
        lambda: main(argv),
        lambda: f"{make_demo([*_options, '--reuse-data'])} goes on from the preprocessed data, where it is complete",
        where=lambda: f" during stage {_current_stage}" if _current_stage else "",
        # The demo's way on, not "the same command", after a full disk.
        again=lambda: how_to_go_on(_current_number, _run_name, _options) if _current_number else "run the demo again",
    )


def _stopped_at(code) -> str:
    """What ended the demo at the current stage, and the demo's own way on. A job's line comes
    first where the stage has a job (1-4) and it said one (not SIGTERM's silent exit)."""
    how = how_to_go_on(_current_number, _run_name, _options)
    if code == EXIT_STOPPED:
        return f"stopped (SIGTERM) at stage {_current_number}/{STAGES}; {how}"
    if _current_number <= 4:
        return f"stopped at stage {_current_number}/{STAGES} (exit {code}); the line above is that stage's job's: {how}"
    return f"stopped at stage {_current_number}/{STAGES} (exit {code}); {how}"


if __name__ == "__main__":
    run()

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
import time
import urllib.request

from jobs import batch_score, evaluate, preprocess, train
from jobs.cli import init_ray, job_parser, one_line_errors, positive_int, tcp_port
from ncf.batch.partitions import partition_dir
from ncf.data import layout
from ncf.data.features import FEATURES_VERSION
from ncf.data.vocab import Vocabularies
from ncf.errors import InputError
from ncf.evaluate.protocol import PAIRED
from ncf.jsonio import write_text
from ncf.model.directory import ModelDir
from ncf.registry import sqlite_uri
from ncf.staging import present
from serve.launch import LOCAL, base_url, check_port_free, running_address

STAGES = 6
# Six trainings are too long for the demo; bench.ablations' rows on Complete Journey are kept here.
RECORDED_ABLATIONS = os.path.join("bench", "results", "ablations_cj.jsonl")


def _stage(number: int, name: str, started: float) -> None:
    print(f"\n=== {number}/{STAGES} {name} ({time.time() - started:.0f} s so far) ===", flush=True)


def print_table(rows: list) -> None:
    """The rows' figures; a baseline's difference to the model, household by household, with its
    paired standard error (``recall@10 - model``)."""
    columns = ["model", "recall@10", "ndcg@10", "hr@10", "mrr@10", "sampled_hr@10", "sampled_ndcg@10", "users"]
    paired = [f"{m} - model" for m in PAIRED]
    print(" | ".join(f"{c:>15}" for c in columns + paired))
    for row in rows:
        cells = [row.get(c, "") for c in columns] + [_minus_model(row, m) for m in PAIRED]
        print(" | ".join(f"{cell:>15}" for cell in cells), flush=True)


def _minus_model(row: dict, metric: str) -> str:
    difference, se = row.get(f"{metric}_minus_model"), row.get(f"{metric}_minus_model_se")
    return "" if difference is None or se is None else f"{difference:+.4f} \u00b1{se:.4f}"


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with LOCAL.open(request, timeout=30) as response:
        return json.load(response)


def stop_app(app_name: str) -> None:
    """Stops the app: its replicas drain and exit. Serve's controller and proxy stop with the
    demo's local cluster (``ray.shutdown``); ``serve.shutdown()`` here would have the controller
    kill itself inside the call that asked it to, which Ray reports as a failed task
    ("ServeController.graceful_shutdown failed ... killed by ray.kill") at the end of every
    successful demo. On a cluster that outlives the demo (RAY_ADDRESS), Serve is shut down."""
    from ray import serve

    serve.delete(app_name)
    if os.environ.get("RAY_ADDRESS"):
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
    from serve.launch import APP_NAME, start, wait_until_healthy

    with one_line_errors():
        # Checked at the start too; something may have taken the port in the minutes since.
        check_port_free("127.0.0.1", port, "stop it or give the demo another --port")
        app = build_app({"model": model, "data": data, "default_at": "data-end", "min_replicas": 1, "max_replicas": 2})
    # Complete Journey ends in 2017, so requests default to the data's end rather than now.
    url = start(app, host="127.0.0.1", port=port)
    try:
        health = wait_until_healthy(url, timeout_s=120)
        expected = ModelDir(model).version
        if health.get("model_version") != expected:
            with one_line_errors():
                raise InputError(
                    f"{url} answers with model {health.get('model_version')}, not the demo's {expected}: another "
                    "server took the port? stop it or give the demo another --port"
                )
        print(f"serving {url} (OpenAPI at {url}/docs): {json.dumps(health)}", flush=True)
        users = Vocabularies.load(layout.vocab_dir(data)).users.raw_of([1, 2])
        answers = [
            ("/recommend (explained)", post(f"{url}/recommend", {"user_id": users[0], "k": 3, "explain": True})),
            (
                "/recommend (unknown household: cold start)",
                post(f"{url}/recommend", {"user_id": "new-household", "k": 3}),
            ),
            ("/recommend/batch", post(f"{url}/recommend/batch", {"user_ids": [users[0], users[1]], "k": 3})),
        ]
        first = answers[0][1]["items"][0]["product_id"]
        answers.append(("/score", post(f"{url}/score", {"user_id": users[1], "product_ids": [first]})))
        for route, answer in answers:
            print(f"{route}: {json.dumps(answer)[:600]}", flush=True)
        return answers
    finally:
        stop_app(APP_NAME)


def support_paths(workdir: str) -> dict:
    """Where the dataset's cache and Ray Train's checkpoints go: under ``workdir`` on a cluster
    the job joined (its workers on other nodes read them), the jobs' own defaults locally."""
    if not os.environ.get("RAY_ADDRESS"):
        return {}
    if not os.path.isabs(workdir):
        print(
            f"[demo] WARNING: --workdir {workdir} is relative: on a cluster it is the job's unpacked working "
            "directory on the head alone; give a path on storage every node mounts (cluster.yaml: /mnt/shared/demo)",
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
        default=RECORDED_ABLATIONS,
        help="bench.ablations rows shown in the report, the committed Complete Journey rows by default (a local "
        "run's results.jsonl may hold another dataset's or code's rows)",
    )
    p.add_argument(
        "--reuse-data",
        action="store_true",
        help="keep DATA if a previous run preprocessed it with this code's feature definitions",
    )
    p.add_argument(
        "--name",
        default=None,
        help="the training's run name (default: train-<UTC date-time>); the name an interrupted demo printed "
        "resumes its training from the checkpoints",
    )
    return p.parse_args(argv)


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


def main(argv=None) -> list:
    args = parse_args(argv)
    started = time.time()
    data, model = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "model")
    validated = model + "-validated"
    report, recommendations = os.path.join(args.workdir, "report"), os.path.join(args.workdir, "recommendations")
    # The demo prints the answers of its few queries itself; Serve's controller, proxy and
    # per-request access logs go to Serve's log files (printed at the end), not into its output.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    shared = support_paths(args.workdir)
    if shared:
        os.environ.setdefault("MLFLOW_TRACKING_URI", sqlite_uri(os.path.join(args.workdir, "mlflow.db")))
    with one_line_errors():
        # Now, not after ten minutes of preprocessing and training.
        check_port_free("127.0.0.1", args.port, "stop it or give the demo another --port")
        evaluate.read_jsonl(args.ablations)  # its rows are read again by the report
        init_ray()
    import ray

    try:
        if os.environ.get("RAY_ADDRESS"):
            with one_line_errors():
                check_no_serve_running()
        _stage(1, "preprocess Complete Journey (Ray Data)", started)
        stats = layout.stats_path(data)
        reusable = os.path.exists(stats) and layout.DataStats(data).features_version == FEATURES_VERSION
        if args.reuse_data and reusable:
            print(f"reusing {data}", flush=True)
        else:
            cache = ["--cache", shared["--cache"]] if shared else []
            preprocess.main(["--dataset", "completejourney", "--output", data, *cache])

        _stage(2, "train AdvancedNCF (Ray Train): the validated model, then the deployment refit", started)
        model_links(model, validated)
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
                *(["--name", args.name] if args.name else []),
            ]
        )

        _stage(3, "evaluate the validated model on the held-out weeks against the baselines; HTML report", started)
        rows = evaluate.main(["--model", validated, "--data", data, "--report", report, "--ablations", args.ablations])
        write_text(os.path.join(args.workdir, "evaluation.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))

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
        print("\nartefacts:")
        for name, path in [
            ("preprocessed data", data),
            ("validated model (evaluated)", validated),
            ("deployment model (served)", model),
            ("evaluation (JSON lines)", os.path.join(args.workdir, "evaluation.jsonl")),
            ("report", os.path.join(report, "report.html")),
            ("recommendations", partition_dir(recommendations, scored["run_date"])),
            ("Serve logs", "/tmp/ray/session_latest/logs/serve"),  # Ray's default temp dir
        ]:
            print(f"  {name:<28} {os.path.abspath(path)}")
        print(f"demo finished in {time.time() - started:.0f} s", flush=True)
        return rows
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

"""The evaluation report renders in headless Chromium; explanations are the model's attention;
``jobs.evaluate`` prints the model's row, then the baselines it was asked for."""

import html
import json
import os
import re
import subprocess

import numpy as np
import pytest
from helpers import BASELINES_WITHOUT_ALS, CHROMIUM_FLAGS, chromium_path

from jobs import evaluate
from ncf.data.features import FEATURES_VERSION
from ncf.errors import InputError
from ncf.evaluate.evaluation import BASELINE_ORDER, MODEL, evaluate_all, model_on_period, sample_users
from ncf.evaluate.report import REPORT, _product_label, write_report
from ncf.model.config import ModelConfig
from ncf.model.directory import WEIGHTS, ModelDir, save_model_dir
from ncf.splits import REFIT, TEST, VAL, VALIDATED


@pytest.fixture(scope="module")
def on_period(small_model_dir, small_data):
    return model_on_period(small_model_dir, small_data[0], TEST)


def test_a_period_handed_in_is_used_only_for_the_period_it_is(on_period, small_model_dir, small_data):
    data, _ = small_data
    with pytest.raises(ValueError, match="holds the test period"):
        evaluate_all(small_model_dir, data, VAL, max_users=5, baselines=(), on_period=on_period)
    with pytest.raises(ValueError, match="exclude_purchased=False"):
        evaluate_all(
            small_model_dir, data, TEST, max_users=5, baselines=(), on_period=on_period, exclude_purchased=True
        )
    handed_in = evaluate_all(small_model_dir, data, TEST, max_users=15, baselines=(), on_period=on_period)
    computed = evaluate_all(small_model_dir, data, TEST, max_users=15, baselines=())
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in handed_in + computed]
    assert drop_time[0] == drop_time[1]


def test_report_renders_without_broken_images(on_period, small_model_dir, small_data, tmp_path):
    data, _ = small_data
    rows = evaluate_all(small_model_dir, data, max_users=15, baselines=BASELINES_WITHOUT_ALS, on_period=on_period)
    # The two-stage rows carry their first stage's coverage (the model's from its rankings), every row the next basket.
    two_stage = {r["model"]: r["first_stage_recall"] for r in rows if "first_stage_candidates" in r}
    assert "advanced_ncf" in two_stage and set(two_stage) <= {"advanced_ncf", "boosted_ranker"}, two_stage
    assert all(0 <= covered <= 1 for covered in two_stage.values()), two_stage
    assert all(0 <= r["next_basket_recall@10"] <= 1 for r in rows)
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_ndcg@10": 0.1, "val_recall@10": 0.08},
        {"epoch": 2, "train_loss": 0.7, "val_ndcg@10": 0.12, "val_recall@10": 0.1},
    ]
    ablations = [
        {**rows[0], "model": MODEL, "seeds": 3, "recall@10_sd": 0.0006, "features_version": FEATURES_VERSION},
        {**rows[0], "model": "advanced_ncf without mf", "seeds": 3, "recall@10_sd": 0.0123, "epochs": 3},
        {**rows[0], "model": "advanced_ncf without mlp", "features_version": FEATURES_VERSION - 1},
    ]
    ranker, period = on_period
    path = write_report(
        str(tmp_path / "report"),
        ranker,
        "v1",
        period,
        rows,
        history=history,
        ablations=ablations,
        ablations_source="runs/<ablations>.jsonl",
        score_users=10,
        households=2,
        best_epoch=1,
    )
    page = open(path).read()
    assert "own_frequency" in page and "without mf" in page and "because:" in page
    assert "(the null slot) 0." in page  # a weight between 0 and 1, not nan
    assert "runs/&lt;ablations&gt;.jsonl" in page  # where the ablation rows came from, escaped
    # The headline counts the households the rows ranked (a --max-users sample), not the period's.
    assert f"held-out period <b>test</b> (a sample of 15 of its {len(period.users):,} households" in page
    # Each baseline's paired difference to the model, with its standard error.
    own = next(r for r in rows if r["model"] == "own_frequency")
    assert f"{own['recall@10_minus_model']:.4f} \u00b1 {own['recall@10_minus_model_se']:.4f}" in page
    # The epoch whose weights were evaluated (early stopping kept the first of two), marked.
    assert "holds the weights of epoch <b>1</b>" in page and '<th scope="row" class="l">1 (evaluated)</th>' in page
    assert page.count("(evaluated)") == 1 and '<th scope="row" class="l">2</th>' in page
    # The ablations' spread is the seeds', said as such; a row of other features is warned about.
    ablation_section = page.split("<h2>Ablations</h2>")[1].split("<h2>")[0]
    assert "\u00b1 0.0123" in ablation_section and "standard deviation over the row's seeds" in ablation_section
    assert f"rows of features version {FEATURES_VERSION - 1} were measured on other feature" in ablation_section
    assert '<th scope="col">features_version</th>' in ablation_section
    # This run's one training, labelled; the ablations' same model over its 3 seeds beside it.
    main = page.split("<h2>Model against the baselines</h2>")[1].split("<h2>")[0]
    recorded = f"{MODEL}, 3 seeds (recorded: runs/&lt;ablations&gt;.jsonl)"
    assert f">{MODEL} (this run)</th>" in main and f">{recorded}</th>" in main
    assert f"{rows[0]['recall@10']:.4f} \u00b1 0.0006" in main and rows[0]["model"] == MODEL  # the rows keep their name
    # The baselines this run did not evaluate are named (ALS: left out here).
    missing = [b for b in BASELINE_ORDER if b not in {r["model"] for r in rows}]
    assert "als" in missing and f"Not evaluated in this run: {', '.join(missing)}.</p>" in main
    # Every table captioned, its header row in a thead; no empty class attribute anywhere.
    assert page.count("<caption>") == page.count("<table>") == 3 and page.count("<thead>") == 3
    assert 'class=""' not in page

    common = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", f"file://{path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-broken-images="0"' in dom.stdout
    assert 'data-images="3"' in dom.stdout  # metrics, training curves, score distribution
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1200,3000", f"--screenshot={shot}", f"file://{path}"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_explanations_are_past_purchases_weighted_by_the_models_attention(on_period):
    """The reasons are the attention weights of the model's own scoring pass over the household's
    history (captured from the attention module), not numbers made up beside it."""
    ranker, period = on_period
    user = int(period.users[2])
    at = period.first_visit[user]
    captured = []
    handle = ranker.model.history_attention.register_forward_hook(lambda module, args, out: captured.append(out[1]))
    try:
        ranking = ranker.rank([user], [at], k=5, explain=True)[0]
    finally:
        handle.remove()
    weights = captured[0]  # N candidates x L (the ranking pass; the reasons' occluded passes follow)
    history, _ = ranker.state.states.timeline(user).history(np.array([at]), ranker.history_length)
    bought = set(history[0][history[0] > 0].tolist())
    places = history[0] > 0
    products, place_of = np.unique(history[0][places], return_inverse=True)
    # Each candidate's attention row summed per distinct past product (a product bought twice
    # weighs both its places), as the explanation must report it.
    summed_rows = [np.bincount(place_of, weights=row[places], minlength=len(products)) for row in weights.numpy()]

    def is_row(because, summed) -> bool:
        weight_of = dict(zip(products.tolist(), summed))
        strongest = np.sort(summed)[::-1][: len(because)]
        return all(abs(weight_of[p] - w) < 1e-5 for p, w in because) and np.allclose(
            [w for _, w in because], strongest, atol=1e-5
        )

    assert len(ranking.explanations) == 5
    for because in ranking.explanations:
        assert because and {p for p, _ in because} <= bought
        # Its reasons are the strongest products of one captured row, with that row's weights.
        assert any(is_row(because, summed) for summed in summed_rows)
    assert all(0 <= w <= 1 for because in ranking.explanations for _, w in because)


def test_the_first_reasons_lead_over_uniform_weights_is_one_when_the_attention_cannot_choose(
    on_period, small_model_dir
):
    """With the query projection zeroed every place (and the null slot) scores alike: the
    statistic must read 1 and the entropy the uniform one, products bought twice included; with
    sharp weights, more."""
    import torch

    from ncf.evaluate.report import explanation_stats
    from ncf.rank.ranker import Ranker

    _, period = on_period
    ranker = Ranker.of_model_dir(ModelDir(small_model_dir), on_period[0].state)

    def bought_twice(user) -> bool:
        history, _ = ranker.state.states.timeline(int(user)).history(
            np.array([period.first_visit[int(user)]]), ranker.history_length
        )
        places = history[0][ranker.rows.product[history[0]] > 0]
        return len(np.unique(places)) < len(places)

    repeats = [u for u in period.users if bought_twice(u)]
    assert repeats  # a product holding two places is what the statistic's count is for
    users = np.array(repeats[:4] + [u for u in period.users if not bought_twice(u)][:4])
    attention = ranker.model.history_attention
    with torch.no_grad():
        attention.q_proj.weight.zero_()
        attention.q_proj.bias.zero_()
    uniform = explanation_stats(ranker, period, users)
    assert uniform["households"] > 0
    assert uniform["first_reason_over_uniform"] == pytest.approx(1.0, abs=1e-4)
    assert uniform["attention_entropy"] == pytest.approx(uniform["uniform_entropy"], abs=1e-4)
    with torch.no_grad():  # a query that reads the keys (their ages differ) through a sharp projection
        g = torch.Generator().manual_seed(0)
        attention.q_proj.bias.normal_(0, 1, generator=g)
        attention.k_proj.weight.normal_(0, 1, generator=g).mul_(30.0)
    sharp = explanation_stats(ranker, period, users)
    assert sharp["first_reason_over_uniform"] > 1.5
    assert sharp["attention_entropy"] < uniform["uniform_entropy"] - 0.1


def test_training_history_becomes_tensorboard_scalars(tmp_path):
    from ncf.train.tensorboard import write_history

    logdir = write_history(
        [
            {"epoch": 1, "train_loss": 0.9, "val_ndcg@10": 0.3, "note": "x"},
            {"epoch": 2, "train_loss": 0.7, "val_ndcg@10": 0.35},
        ],
        str(tmp_path / "tb"),
    )
    (events,) = os.listdir(logdir)
    payload = open(os.path.join(logdir, events), "rb").read()
    assert events.startswith("events.out.tfevents")
    assert (
        payload.count(b"train/train_loss") == 2 and payload.count(b"train/val_ndcg_10") == 2
    )  # TensorBoard tags cannot hold "@"
    assert b"train/note" not in payload  # only numbers are scalars


def test_raw_ids_are_html_escaped(tmp_path):
    """Product and household ids come from the logs: in the report they are text, never markup."""
    import html
    from types import SimpleNamespace

    from ncf.data.user_state import UserStates
    from ncf.data.vocab import Vocabularies, Vocabulary
    from ncf.evaluate.evaluation import Period
    from ncf.evaluate.report import households_html
    from ncf.rank.ranker import Ranking

    script, amp, household = "<img src=x onerror=alert(1)>", "p&q<b>", "<i>hh</i>"
    vocabs = Vocabularies(
        Vocabulary.from_ids([household]),
        Vocabulary.from_ids([script, amp], extra={"department_index": [1, 1], "category_index": [1, 1]}),
        Vocabulary.from_ids(["<d>"]),
        Vocabulary.from_ids(["<c>"]),
    )
    states = UserStates.from_purchases(np.array([1, 1]), np.array([1, 2]), np.array([100, 200]), num_users=2)
    ranking = Ranking(np.array([1, 2]), np.array([0.9, 0.8]), False, explanations=[[(1, 0.7)], [(2, 0.3)]])
    ranker = SimpleNamespace(
        state=SimpleNamespace(vocabs=vocabs, states=states),
        model=SimpleNamespace(attends=True),
        rank=lambda users, at, k, explain, exclude_purchased=False: [ranking],
    )
    period = Period("test", 300, truth={1: np.array([2])}, first_basket={1: np.array([2])}, first_visit={1: 300})
    page = households_html(ranker, period, np.array([1]))
    for raw in (script, amp, household, "<d>", "<c>"):
        assert raw not in page and html.escape(raw) in page
    assert page.count(html.escape(script)) == 3  # recent purchase, recommendation, its "because"


def test_the_evaluate_job_prints_the_model_then_the_baselines_it_was_asked_for(small_model_dir, small_data, capsys):
    data, _ = small_data
    common = ["--model", small_model_dir, "--data", data, "--max-users", "15"]
    given = []
    rows = evaluate.main([*common, "--no-als"], on_row=given.append)
    names = [r["model"] for r in rows]
    assert names[0] == MODEL and "als" not in names, names
    assert names[1:] == [b for b in BASELINES_WITHOUT_ALS if b in names], names
    assert {"popularity", "own_frequency", "decayed_frequency", "tifu_knn"} <= set(names), names
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # stdout: the rows alone
    assert printed == rows  # what the job returns (the demo's evaluation.jsonl) is what it printed
    assert given == rows  # and what a caller is given as each row is computed
    # The baselines' rows name the model their paired differences are to, not a version of their own.
    assert printed[0]["model_version"] == "v1" and all("model_version" not in r for r in printed[1:])
    assert {r["compared_with_version"] for r in printed[1:]} == {"v1"}
    assert all(0.0 <= r["recall@10"] <= 1.0 for r in printed), printed

    alone = evaluate.main([*common, "--no-baselines"])
    assert [r["model"] for r in alone] == [MODEL]
    assert alone[0]["recall@10"] == rows[0]["recall@10"]


@pytest.mark.faults
def test_a_baseline_that_fails_costs_its_own_row_and_the_job_exits_1(
    small_model_dir, small_data, tmp_path, monkeypatch, capsys
):
    """Old code: one baseline that raised (ALS or the boosted ranker out of memory at scale) ended
    jobs.evaluate with a traceback, and the rows and report of every other were lost."""
    import shutil
    from dataclasses import replace

    from ncf.evaluate.baselines import BASELINES, Baseline

    data = str(tmp_path / "data")
    shutil.copytree(small_data[0], data)  # its tuned.json is this test's

    def out_of_memory(context, **params):
        raise MemoryError("no room for the factors")

    def broken(context, **params):
        raise RuntimeError("a bug in the baseline")

    monkeypatch.setitem(BASELINES, "decayed_frequency", replace(BASELINES["decayed_frequency"], build=out_of_memory))
    monkeypatch.setitem(BASELINES, "own_frequency", Baseline("own_frequency", broken))
    monkeypatch.setattr(evaluate, "BASELINE_ORDER", ("decayed_frequency", "own_frequency", "popularity"))
    report = tmp_path / "report"
    given = []  # the demo's evaluation.jsonl: the rows computed, before the exit
    with pytest.raises(SystemExit) as exited:
        evaluate.main(
            ["--model", small_model_dir, "--data", data, "--max-users", "15", "--report", str(report)],
            on_row=given.append,
        )
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    printed = {row["model"]: row for row in map(json.loads, out.splitlines())}
    assert given == list(printed.values())
    assert list(printed) == [MODEL, "decayed_frequency", "own_frequency", "popularity"]
    assert printed["decayed_frequency"]["failed"] == "tuning: MemoryError: no room for the factors"
    assert printed["own_frequency"]["failed"] == "evaluation: RuntimeError: a bug in the baseline"
    assert 0 <= printed["popularity"]["recall@10"] <= 1 and 0 <= printed[MODEL]["recall@10"] <= 1
    assert "Traceback" in err and "a bug in the baseline" in err  # the log keeps where it failed
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 4 rows failed") and "own_frequency in its evaluation: RuntimeError" in last
    page = (report / "report.html").read_text()
    assert "failed in its tuning: MemoryError: no room for the factors" in page and "popularity" in page


@pytest.mark.faults
def test_a_validation_period_with_no_household_fails_the_tuned_baselines_alone(
    small_model_dir, small_data, tmp_path, monkeypatch, capsys
):
    """A log with a gap over the validation weeks (or --exclude-purchased where no one bought
    anything new in them): reading the period raised outside the baselines' error handling, and
    popularity and own-frequency, which need no tuning, were never computed (a review, 2026-12-07)."""
    import shutil

    from ncf.evaluate import evaluation
    from ncf.splits import VAL

    data = str(tmp_path / "data")
    shutil.copytree(small_data[0], data)
    real = evaluation.point_in_time_period

    def no_validation_household(state, split, *args, **kwargs):
        if split == VAL:
            raise InputError(f"no household of the {split} period can be evaluated")
        return real(state, split, *args, **kwargs)

    monkeypatch.setattr(evaluation, "point_in_time_period", no_validation_household)
    monkeypatch.setattr(evaluate, "BASELINE_ORDER", ("decayed_frequency", "own_frequency", "popularity"))
    with pytest.raises(SystemExit) as exited:
        evaluate.main(["--model", small_model_dir, "--data", data, "--max-users", "15"])
    assert exited.value.code == 1
    printed = {row["model"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert list(printed) == [MODEL, "decayed_frequency", "own_frequency", "popularity"]
    assert (
        printed["decayed_frequency"]["failed"] == "tuning: InputError: no household of the val period can be evaluated"
    )
    assert all(0 <= printed[name]["recall@10"] <= 1 for name in (MODEL, "own_frequency", "popularity"))


def _trained_through(small_model_dir: str, data: str, output: str, trained_through: int, run: str) -> str:
    """``small_model_dir``'s weights as a model directory whose labels end at ``trained_through``."""
    import torch

    weights = torch.load(os.path.join(small_model_dir, WEIGHTS), weights_only=True)
    config = ModelConfig.from_dict(ModelDir(small_model_dir).config["model"])
    return save_model_dir(output, weights, config, data, trained_through, run)


@pytest.mark.faults
def test_a_model_trained_on_the_periods_labels_is_refused(small_model_dir, small_data, tmp_path, capsys):
    """A refit's labels run through the data's end: its figures on the test weeks are not held out."""
    data, stats = small_data
    bounds = stats["boundaries"]
    refit = _trained_through(small_model_dir, data, str(tmp_path / "refit"), bounds["end"] + 1, REFIT)
    with pytest.raises(SystemExit) as exited:
        evaluate.main(["--model", refit, "--data", data, "--no-baselines"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "trained_through" in error and "test period's start" in error and "validated model" in error, error
    with pytest.raises(InputError, match="val period's start"):
        model_on_period(refit, data, VAL)
    # Labels that end where the period starts are held out (the validated model on validation).
    validated = _trained_through(small_model_dir, data, str(tmp_path / "validated"), bounds["val_start"], VALIDATED)
    _, period = model_on_period(validated, data, VAL)
    assert period.start == bounds["val_start"]


@pytest.mark.faults
def test_a_model_refused_as_not_held_out_leaves_the_report_directory_as_it_was(
    small_model_dir, small_data, tmp_path, capsys
):
    """The placeholder was written before model_on_period, whose check refuses a refit (its labels
    reach into the period): the refused command, exit 2, replaced a finished report.html with the
    placeholder, or created the --report folder to hold it (the second reading of 2026-12-06).
    The placeholder now comes after model_on_period: the directory is left as it was, or not created."""
    data, stats = small_data
    refit = _trained_through(small_model_dir, data, str(tmp_path / "refit"), stats["boundaries"]["end"] + 1, REFIT)
    report = tmp_path / "report"
    report.mkdir()
    finished = "<html>the finished report of model v0 \u00b1</html>".encode()
    (report / REPORT).write_bytes(finished)
    for output in (report, tmp_path / "fresh"):
        with pytest.raises(SystemExit) as exited:
            evaluate.main(["--model", refit, "--data", data, "--no-baselines", "--report", str(output)])
        assert exited.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "trained_through" in error, error
    assert (report / REPORT).read_bytes() == finished and os.listdir(report) == [REPORT]
    assert not os.path.lexists(tmp_path / "fresh")


def test_a_report_of_exclude_purchased_ranks_its_households_that_way_and_says_so(on_period, tmp_path):
    """Old code: the table came from the excluding ranking, the households shown beside it from the
    plain one (every recommendation bought before, none ticked), and nothing said which."""
    ranker, period = on_period
    users = len(period.users)
    full = {
        "model": MODEL,
        "seeds": 3,
        "users": users,
        "recall@10": 0.42,
        "recall@10_sd": 0.001,
        "features_version": FEATURES_VERSION,
    }
    # The run's own row: as many households.
    row = {"model": MODEL, "users": users, **{f"{m}@10": 0.41 for m in ("recall", "ndcg", "hr", "mrr")}}

    def page_of(name: str, exclude_purchased: bool) -> tuple:
        path = write_report(
            str(tmp_path / name),
            ranker,
            "v1",
            period,
            [row],
            ablations=[full],
            score_users=4,
            households=1,
            exclude_purchased=exclude_purchased,
        )
        return path, open(path).read()

    assert "3 seeds" in page_of("plain", False)[1]  # the recorded row shows beside a plain ranking's
    path, page = page_of("r", True)
    assert "<b>exclude_purchased</b>" in page and "<html lang='en'>" in page
    # bench.ablations ranks with past purchases: its row is no figure of this mode's main table.
    assert "3 seeds" not in page
    # No recommendation was bought before: no repeat figure to average, said instead of "nan".
    assert "none is a product the household bought before (<b>exclude_purchased</b> leaves them out)" in page
    assert not re.search(r"\bnan\b", re.sub(r'src="data:[^"]*"', "", page)), "a figure of nothing printed as nan"
    shown = int(sample_users(period.users, 4, seed=1)[0])
    at = period.first_visit[shown]
    bought = set(ranker.state.states.timeline(shown).products_before(at).tolist())
    ranked = ranker.rank([shown], [at], k=10, exclude_purchased=True)[0].products.tolist()
    assert ranked and not set(ranked) & bought
    labels = [_product_label(ranker, [p])[0] for p in ranked]
    households = page.split("<h2>Households</h2>")[1]
    assert all(label in households for label in labels)


def test_a_report_of_a_model_without_attention_says_so_instead_of_empty_reasons(small_data, tmp_path):
    """Old code: every recommendation read "because: no history" and the attention's paragraph
    printed "Over the top 10 of 0 households: mean entropy nan nats"."""
    from conftest import SMALL_MODEL

    from ncf.model.directory import save_untrained_model_dir

    data, _ = small_data
    model = save_untrained_model_dir(str(tmp_path / "m"), data, "v1", **{**SMALL_MODEL, "use_attention": False})
    ranker, period = model_on_period(model, data, TEST)
    path = write_report(str(tmp_path / "r"), ranker, "v1", period, [], score_users=4, households=2)
    page = open(path, encoding="utf-8").read()
    assert "Nothing: this model was trained without its attention" in page and "entropy nan" not in page
    assert "because:" not in page.split("<h2>Households</h2>")[1]


def test_the_reports_words_for_the_households_purchases_name_the_validation_weeks_as_not_held_out():
    """The page's header said "not held out" for --split val, its score chart and households
    still "bought in the held-out period"."""
    from ncf.evaluate.protocol import Period
    from ncf.evaluate.report import _period_noun

    val, test = Period(VAL, 0, {}, {}, {}), Period(TEST, 0, {}, {}, {})
    assert _period_noun(test) == "held-out period"
    assert "held-out" not in _period_noun(val) and "not held out" in _period_noun(val)


@pytest.mark.faults
def test_an_evaluation_that_stops_before_its_report_leaves_no_previous_runs_report(
    small_model_dir, small_data, tmp_path, monkeypatch
):
    """The report was written only after every row: an evaluation that failed or was interrupted
    (a second `make demo` in the same directory) left the previous run's report.html, about
    another model, beside this run's rows (the report review of 2026-12-06). It is replaced,
    whole, by a page naming this run's model before the evaluation starts."""
    report = tmp_path / "report"
    report.mkdir()
    (report / REPORT).write_text("<html>the previous run's report of model v0</html>")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C once the evaluation has started

    monkeypatch.setattr(evaluate, "evaluate_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(["--model", small_model_dir, "--data", small_data[0], "--report", str(report)])
    page = (report / REPORT).read_text(encoding="utf-8")
    assert "v0" not in page and "previous run" not in page
    assert "model version <b>v1</b>" in page and "has not finished" in page
    assert os.listdir(report) == [REPORT]  # replaced through a temporary name, none left


def test_a_score_chart_with_an_empty_group_draws_the_other_and_says_so():
    """``score_chart`` took the minimum over every group: households that had bought every product
    the model knows left the never-bought group empty, and the report failed with ValueError
    after the whole evaluation (the report review of 2026-12-06)."""
    from ncf.evaluate.report import _scores_section, score_chart

    samples = {"bought": np.array([0.2, 0.01, 0.003]), "never_bought": np.array([])}
    assert score_chart(samples).startswith("<img ")
    section = _scores_section(samples, 3, "held-out period")
    assert "(median 0.01)" in section and "(none: they had bought every product the model knows)" in section
    assert "nan" not in section.split("<img")[0]
    assert score_chart({"bought": np.array([]), "never_bought": np.array([])}) == ""


@pytest.mark.faults
def test_a_sweep_winners_model_keeps_its_trials_epochs_and_the_one_kept(small_model_dir, small_data, tmp_path):
    """``SWEEP/best`` held only the sweep's row in ``metrics.json``: its report said "no per-epoch
    history". It keeps the trial's every epoch (from its run's latest checkpoint: the best one's
    state stops at its own epoch) and the epoch kept, which the report marks."""
    import shutil

    import pandas as pd

    from ncf.train.checkpoint import RAY_INDEX, TRAIN_STATE
    from tune.results import BEST, CHECKPOINT_PATH, export_best
    from tune.settings import SweepSettings

    data, _ = small_data
    source = ModelDir(small_model_dir)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_ndcg@10": v} for e, v in ((1, 0.1), (2, 0.3), (3, 0.2))]
    settings = SweepSettings(data=data, output=str(tmp_path / "sweep"))
    trial = os.path.join(settings.train_dir, "t1")
    results = []
    for epoch in (2, 3):  # Ray keeps the best and the latest
        folder = os.path.join(trial, f"checkpoint_00000{epoch}")
        os.makedirs(folder)
        shutil.copy(os.path.join(small_model_dir, WEIGHTS), folder)
        state = {
            "epoch": epoch,
            "history": history[:epoch],
            "features_version": FEATURES_VERSION,
            "model_config": source.config["model"],
            "trained_through": source.trained_through,
            "run": VALIDATED,
        }
        with open(os.path.join(folder, TRAIN_STATE), "w") as f:
            json.dump(state, f)
        results.append({"checkpoint_dir_name": os.path.basename(folder), "metrics": history[epoch - 1]})
    with open(os.path.join(trial, RAY_INDEX), "w") as f:
        json.dump({"checkpoint_results": results, "latest_checkpoint_result": results[-1]}, f)
    # Tune's recorded path: where the sweep was when it reported (the export reads the sweep's own).
    table = pd.DataFrame(
        [{"trial_id": "t1", BEST: 0.3, "best_epoch": 2.0, CHECKPOINT_PATH: "/gone/t1/checkpoint_000002"}]
    )

    metrics = ModelDir(export_best(table, settings)).metrics()
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3] and metrics["best_epoch"] == 2
    assert metrics["sweep"]["trial_id"] == "t1" and evaluate.kept_epoch(metrics) == 2

    # The winner's folder removed after it finished (a resume's advice for a damaged trial): one
    # line naming it, not read_train_state's FileNotFoundError (a review of tune/, 2026-12-07).
    shutil.rmtree(trial)
    with pytest.raises(InputError, match=r"the best trial t1's checkpoint .*t1/checkpoint_000002 is missing"):
        export_best(table, settings)


def test_the_ablations_features_version_is_escaped_and_compared_as_a_number():
    """The warning joined each row's features_version into the page unescaped: a user's
    ``--ablations`` file put its markup in the report (the second reading of 2026-12-06)."""
    from ncf.evaluate.report import _ablations_section

    hostile = "<img src=x onerror=alert(1)>"
    section = _ablations_section([{"model": "m", "features_version": hostile}], None)
    assert "<img src=x" not in section and html.escape(hostile) in section
    # The same version as a float (a table's column) is no other version.
    assert "Warning" not in _ablations_section([{"model": "m", "features_version": float(FEATURES_VERSION)}], None)


def test_the_evaluated_epoch_is_said_marked_only_where_the_history_has_it():
    """The page said the epoch was "marked in the chart and the table" when no row of the history
    was that epoch (the second reading of 2026-12-06)."""
    from ncf.evaluate.report import _training_section

    history = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.7}]
    marked = _training_section(history, 2)
    assert "marked in the chart and the table" in marked and '<th scope="row" class="l">2 (evaluated)</th>' in marked
    unmarked = _training_section(history, 5)
    assert "holds the weights of epoch <b>5</b>" in unmarked and "no row of that epoch" in unmarked
    assert "marked in the chart" not in unmarked and "(evaluated)" not in unmarked
    assert "(evaluated)" not in _training_section(history, None)


def test_the_kept_epoch_of_a_metrics_file_of_another_shape_is_none():
    """``training`` that is no object raised AttributeError after the whole evaluation (metrics.json
    is outside the checksums); jobs.evaluate reads the epoch before the evaluation now."""
    for metrics, epoch in (
        ({"best_epoch": 3, "training": {"epoch": 5}}, 3),
        ({"training": {"epoch": 5}}, 5),
        ({"best_epoch": None, "training": {"epoch": 5}}, 5),
        ({"best_epoch": 2.0}, 2),
        ({"training": "epoch 5"}, None),
        ({"training": [5]}, None),
        ({"training": None}, None),
        ({"best_epoch": True}, None),
        ({"best_epoch": "3"}, None),
        ({"best_epoch": float("nan")}, None),
        ({}, None),
    ):
        assert evaluate.kept_epoch(metrics) == epoch, metrics


def test_a_history_of_another_shape_is_left_out_of_the_report_not_failed_on(capsys):
    """A metrics.json history that is no list of epochs failed the report after the whole
    evaluation (the file is outside the checksums): it is left out, said in one line."""
    good = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_ndcg@10": 0.3}]
    assert evaluate.drawable_history({"history": good}) == good
    assert evaluate.drawable_history({}) is None and capsys.readouterr().err == ""
    for history in ("epochs", [1, 2], [{"epoch": "1", "train_loss": 0.5}], [{"epoch": 1}], {"epoch": 1}):
        assert evaluate.drawable_history({"history": history}) is None, history
        assert "history the report cannot draw" in capsys.readouterr().err
    from ncf.evaluate.report import training_chart

    assert training_chart(good, 2)  # what a kept history must carry is enough to draw it


def _full_model(**changes) -> dict:
    """The ablations' default-model row, as bench/results/ablations_cj.jsonl holds it."""
    row = {"model": MODEL, "seeds": 3, "epochs": 3, "users": 2078, "recall@10": 0.4225, "recall@10_sd": 0.0006}
    return {**row, "mrr@10": 0.6976, "mrr@10_sd": 0.0015, "features_version": FEATURES_VERSION, **changes}


def test_the_main_table_shows_the_ablations_model_over_its_seeds_beside_this_runs_one_training():
    """The main table's advanced_ncf row was this run's one training, with no sd, while the
    ablations below had the same model over 3 seeds: one labelled as this run's, the other added
    beside it, mean \u00b1 its seeds' sd, where it is of the evaluated DATA's features."""
    from ncf.evaluate.report import _main_section

    rows = [
        {"model": MODEL, "recall@10": 0.41, "ndcg@10": 0.45, "users": 2078},
        {"model": "popularity", "recall@10": 0.2, "ndcg@10": 0.2},
    ]
    rows[1].update({"recall@10_minus_model": -0.21, "recall@10_minus_model_se": 0.01})
    section = _main_section(rows, [_full_model(), {**_full_model(), "model": "advanced_ncf without mf"}], "x.jsonl")
    names = re.findall(r'<th scope="row" class="l">([^<]*)</th>', section)
    assert names == [f"{MODEL} (this run)", f"{MODEL}, 3 seeds, 3 epochs at most (recorded: x.jsonl)", "popularity"]
    assert "<td>0.4225 \u00b1 0.0006</td>" in section and "<td>0.6976 \u00b1 0.0015</td>" in section
    assert "<td>-0.2100 \u00b1 0.0100</td>" in section and rows[0]["model"] == MODEL
    for not_comparable in (
        _full_model(seeds=1),  # one training: no better than this run's
        _full_model(features_version=None),
        _full_model(features_version=FEATURES_VERSION - 1),
        _full_model(model="advanced_ncf without mf"),
        # Another DATA's households, or this run a --max-users sample (a review, 2026-12-07).
        _full_model(users=50),
        _full_model(users=None),
    ):
        names = re.findall(r'<th scope="row" class="l">([^<]*)</th>', _main_section(rows, [not_comparable], None))
        assert names == [f"{MODEL} (this run)", "popularity"], not_comparable
    assert "seeds (recorded" not in _main_section(rows, None, None)
    # bench.ablations measures the test weeks with past purchases ranked: no other period or mode.
    for period_name, excluding in (("val", False), ("test", True)):
        assert "seeds, 3 epochs" not in _main_section(rows, [_full_model()], "x.jsonl", period_name, excluding)


def test_a_figure_of_no_household_reads_n_a_in_the_report_and_the_demo():
    """A mean over no household (no repeat purchase in a sample) and one household's paired
    standard error are nan: printed as "nan", "+nan", "\u00b1 nan"."""
    from ncf.evaluate.report import PAIRED_SE, cell_text

    row = {"repeat_recall@10": float("nan"), "recall@10_minus_model": -0.01, "recall@10_minus_model_se": float("nan")}
    assert cell_text(row, "repeat_recall@10") == "n/a"
    assert cell_text(row, "recall@10_minus_model", PAIRED_SE) == "-0.0100"


def test_a_cell_shows_the_spread_its_table_is_about_never_two():
    """A row carrying both a seeds' sd and a standard error read "0.4200 \u00b1 0.0010 \u00b1 0.0060"."""
    from ncf.evaluate.report import PAIRED_SE, SEED_SD, _table

    row = {"model": "m", "recall@10": 0.42, "recall@10_sd": 0.001, "recall@10_se": 0.006, "seeds": 3}
    seeds = _table([row], ["model", "recall@10"], "seeds", SEED_SD)
    paired = _table([row], ["model", "recall@10"], "paired", PAIRED_SE)
    assert "<td>0.4200 \u00b1 0.0010</td>" in seeds and "0.0060" not in seeds
    assert "<td>0.4200 \u00b1 0.0060</td>" in paired and "0.0010" not in paired
    # One seed: its sd is no spread to show.
    assert "<td>0.4200</td>" in _table([{**row, "seeds": 1}], ["model", "recall@10"], "seeds", SEED_SD)


def test_the_ablation_table_shows_every_figure_its_rows_carry_with_their_sd():
    from ncf.evaluate.report import _ablations_section

    row = _full_model(**{"repeat_recall@10": 0.2738, "repeat_recall@10_sd": 0.0007, "explore_recall@10": 0.0005})
    section = _ablations_section([{**row, "explore_recall@10_sd": 0.0002}], None)
    for column in ("mrr@10", "repeat_recall@10", "explore_recall@10"):
        assert f'<th scope="col">{column}</th>' in section
    assert "0.6976 \u00b1 0.0015" in section and "0.2738 \u00b1 0.0007" in section and "0.0005 \u00b1 0.0002" in section
    assert "<caption>" in section and "Warning" not in section


@pytest.mark.faults
def test_ablation_rows_without_a_features_version_are_flagged_not_presented_as_comparable():
    """A row without ``features_version`` was treated as of the evaluated DATA's features."""
    from ncf.evaluate.report import _ablations_section

    section = _ablations_section([_full_model(), {"model": "<old> row", "recall@10": 0.3}], None)
    assert "&lt;old&gt; row: no features version recorded" in section and "is unknown" in section
    assert f"{MODEL}: no features version" not in section and "rows of features version" not in section


def test_an_attention_paragraph_over_no_household_says_so_and_averages_nothing():
    """Every household sampled a cold start: "Over the top 10 of 0 households: mean entropy nan
    nats", after np.mean's warning of an empty mean."""
    import warnings
    from types import SimpleNamespace

    from ncf.evaluate.protocol import Period
    from ncf.evaluate.report import _attention_paragraph, _first_reason_over_uniform, explanation_stats
    from ncf.rank.ranker import Ranking

    cold = Ranking(np.array([1, 2]), np.array([0.5, 0.4]), True, explanations=[[], []])
    ranker = SimpleNamespace(rank=lambda users, at, k, exclude_purchased, explain: [cold] * len(users))
    period = Period(TEST, 0, {1: np.array([1]), 2: np.array([2])}, {}, {1: 10, 2: 20})
    on_null = Ranking(np.array([1]), np.array([0.5]), False, explanations=[[(1, 0.0)]], attention_null=np.array([1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.mean([]) warns
        explained = explanation_stats(ranker, period, period.users)
        assert np.isnan(_first_reason_over_uniform(on_null, np.array([1])))
    assert explained["households"] == 0
    paragraph = _attention_paragraph(explained)
    assert "No household sampled here has a recommendation the attention explains" in paragraph
    assert "nan" not in paragraph
    # Households explained, every first reason's weight on the null slot: no ratio, said so.
    some = {**explained, "households": 2, "attention_entropy": 0.5, "uniform_entropy": 0.7, "null_weight": 1.0}
    some["share_with_different_reasons"] = 0.0
    assert "nan" not in _attention_paragraph(some) and "not comparable with uniform weights" in _attention_paragraph(
        some
    )


def test_the_baselines_without_a_row_are_named():
    """The boosted ranker without training lists (skipped, only logged) and ALS under --no-als
    left the table without a word."""
    from ncf.evaluate.report import _not_evaluated

    evaluated = [{"model": name} for name in BASELINE_ORDER if name not in ("boosted_ranker", "als")]
    assert _not_evaluated([{"model": MODEL}, *evaluated]) == "<p>Not evaluated in this run: boosted_ranker, als.</p>"
    failed = {"model": "als", "failed": "tuning: MemoryError"}  # its row says why
    assert "als" not in _not_evaluated([{"model": "boosted_ranker"}, failed, *evaluated])
    assert _not_evaluated([{"model": name} for name in BASELINE_ORDER]) == ""


def test_the_charts_names_are_slanted_and_their_alt_texts_name_every_curve(monkeypatch):
    """Seven rows' names overlapped under the bars; the training chart's alt text named NDCG@10
    alone, beside a recall curve."""
    from ncf.evaluate import report

    drawn = []
    monkeypatch.setattr(report, "_png", lambda fig, alt: drawn.append((fig, alt)) or "")
    rows = [{"model": name, "recall@10": 0.1, "ndcg@10": 0.1} for name in (MODEL, *BASELINE_ORDER)]
    report.metrics_chart(rows)
    history = [{"epoch": 1, "train_loss": 0.9, "val_ndcg@10": 0.1, "val_recall@10": 0.08}]
    report.training_chart(history, 1)
    (metrics, _), (training, alt) = drawn
    labels = metrics.axes[0].get_xticklabels()
    assert [label.get_text() for label in labels] == [r["model"] for r in rows]
    assert all(label.get_rotation() == 30 and label.get_horizontalalignment() == "right" for label in labels)
    curves = [line.get_label() for line in training.axes[1].get_lines() if not line.get_label().startswith("_")]
    assert len(curves) == 3 and "training loss" in alt and "epoch 1 marked" in alt  # two metrics and the epoch
    assert "validation NDCG@10" in alt and "validation recall@10" in alt

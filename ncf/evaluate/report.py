"""The evaluation report: one self-contained HTML page (PNGs embedded), readable offline.

It shows what evaluation measured, never numbers typed in by hand:

* the model against each baseline on the held-out period (table and bar chart);
* training and validation curves (the per-epoch history the model directory keeps), the epoch
  whose weights were evaluated marked;
* the ablation table, when ``bench.ablations`` results are given;
* the model's score distribution: held-out purchases against products the household never
  bought, scored at the same moments;
* a few households' recent purchases beside their recommendations, with the past purchases
  the attention weighted most for each.

Example::

    ranker, period = model_on_period(model_dir, data, TEST)
    rows = evaluate_all(model_dir, data, TEST, on_period=(ranker, period))
    write_report("artifacts/demo/report", ranker, ModelDir(model_dir).version, period, rows, history=[...])
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ncf.data.features import FEATURES_VERSION
from ncf.evaluate.evaluation import BASELINE_ORDER, MODEL, K, Period, sample_users
from ncf.evaluate.protocol import PAIRED, bought_by_period_end
from ncf.jsonio import write_text
from ncf.model.files import without_diverged_score
from ncf.splits import TEST

REPORT = "report.html"

# The page counts its images that failed to decode, so a headless browser's DOM dump can tell.
_IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute('data-images', document.images.length);
  document.body.setAttribute('data-broken-images', broken);
});
</script>"""

_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%}h2{margin-top:2em}
caption{text-align:left;font-weight:bold;padding:4px 0}td{white-space:nowrap}.wide{overflow-x:auto}
.hh{display:grid;grid-template-columns:1fr 2fr;gap:1em;border-top:1px solid #ddd;padding:.5em 0}
small{color:#666}
</style>"""


def _png(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The main table's columns a terminal line has no room for (jobs.demo's console table leaves them out).
_WIDE_COLUMNS = [
    "mrr",
    f"recall_lit@{K}",
    f"repeat_recall@{K}",
    f"explore_recall@{K}",
    f"repeat_share@{K}",
    f"next_basket_recall@{K}",
    f"next_basket_ndcg@{K}",
    "first_stage_recall",
]
# The main table's columns, in its order.
METRIC_COLUMNS = [
    "model",
    f"recall@{K}",
    f"ndcg@{K}",
    f"hr@{K}",
    f"mrr@{K}",
    *_WIDE_COLUMNS,
    f"sampled_hr@{K}",
    f"sampled_ndcg@{K}",
    *(f"{metric}_minus_model" for metric in PAIRED),
    "users",
]
# jobs.demo's console table: the main table's columns a terminal line has room for, in its order
# (one list, so that a column renamed here is not left blank there).
CONSOLE_COLUMNS = [c for c in METRIC_COLUMNS if c not in _WIDE_COLUMNS]
SEED_SD = "_sd"  # the spread of a bench row's seeds (how much a training varies)
PAIRED_SE = "_se"  # the paired standard error of a baseline's difference to the model


def cell_text(row: Dict, column: str, spread: Optional[str] = None) -> str:
    """A row's figure as its table shows it (jobs.demo's too): a float to 4 decimals, then
    \u00b1 the row's ``column + spread`` where it has one. One ``spread`` per table, so that a row
    carrying both a seeds' sd and a standard error never reads "0.4200 \u00b1 0.0010 \u00b1 0.0060"."""
    value = row.get(column, "")
    signed = "+" if column.endswith("_minus_model") else ""  # a difference reads as one: +0.0037, -0.0235
    if value is None or (isinstance(value, float) and math.isnan(value)):  # a mean over no household
        return "n/a"
    text = f"{value:{signed}.4f}" if isinstance(value, float) else str(value)
    deviation = row.get(f"{column}{spread}") if spread else None
    # One seed has no spread to speak of, whatever its row holds; one household's paired se is nan.
    if isinstance(deviation, float) and not math.isnan(deviation) and (spread != SEED_SD or row.get("seeds", 1) > 1):
        text += f" \u00b1 {deviation:.4f}"
    return text


def failed_text(row: Dict) -> str:
    """A row of a baseline that raised, in words (jobs.demo's table too): where it failed, and why."""
    return f"failed in its {row['failed']}"


_LEFT = ' class="l"'


def _table(rows: Sequence[Dict], columns: Sequence[str], caption: str, spread: Optional[str] = None) -> str:
    """``spread``: the suffix of the figures this table's \u00b1 shows (:func:`cell_text`). The
    first column heads each row (``<th scope="row">``), for screen readers."""
    head = "".join(f'<th scope="col"{_LEFT if i == 0 else ""}>{html.escape(c)}</th>' for i, c in enumerate(columns))
    body = ""
    for row in rows:
        name = f'<th scope="row"{_LEFT}>{html.escape(cell_text(row, columns[0]))}</th>'
        if "failed" in row:  # a baseline that raised: its name, and where and why, across the figures
            failed = html.escape(failed_text(row))
            body += f'<tr>{name}<td colspan="{len(columns) - 1}">{failed}</td></tr>'
            continue
        body += f"<tr>{name}" + "".join(f"<td>{html.escape(cell_text(row, c, spread))}</td>" for c in columns[1:])
        body += "</tr>"
    # Scrolled within its own box where its columns are wider than the page (a figure \u00b1 its
    # spread is kept on one line), not across the page's edge.
    return (
        f'<div class="wide"><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def metrics_chart(rows: Sequence[Dict]) -> str:
    plt = _pyplot()
    rows = [r for r in rows if "failed" not in r]  # the table says why they have no figures
    names = [r["model"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(rows))
    for offset, metric in ((-0.2, f"recall@{K}"), (0.2, f"ndcg@{K}")):
        bars = ax.bar(x + offset, [r[metric] for r in rows], width=0.4, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    # Seven rows' names side by side overlap: slanted, and _png's tight bounding box keeps them whole.
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("score")
    ax.legend()
    ax.set_title("Full ranking on the evaluated period")
    return _png(fig, "Recall@10 and NDCG@10 of the model and of each baseline")


# The validation curves the training chart draws, and their words in its alt text.
_VALIDATION_CURVES = {"val_ndcg@10": "validation NDCG@10", "val_recall@10": "validation recall@10"}


def training_chart(history: Sequence[Dict], best_epoch: Optional[int] = None) -> str:
    """``best_epoch``: the epoch whose weights the model holds, marked on both panels (the
    curves run on past it where training went on and early stopping kept an earlier epoch)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (logQ-corrected BCE)")
    for metric in _VALIDATION_CURVES:
        right.plot(epochs, [h.get(metric, np.nan) for h in history], marker="o", label=metric)
    if best_epoch is not None:
        left.axvline(best_epoch, color="tab:red", linestyle="--")
        right.axvline(best_epoch, color="tab:red", linestyle="--", label=f"evaluated (epoch {best_epoch})")
    right.set_xlabel("epoch")
    right.legend()
    right.set_title("validation (full ranking, sampled users)")
    marked = f", the evaluated epoch {best_epoch} marked" if best_epoch is not None else ""
    return _png(fig, f"training loss and {' and '.join(_VALIDATION_CURVES.values())} by epoch{marked}")


def _training_section(history: Optional[Sequence[Dict]], best_epoch: Optional[int]) -> str:
    """The curves and the table of every epoch, the evaluated one marked: the history holds every
    epoch trained, the model only the one its training kept (the best validation NDCG@10)."""
    if not history:
        return "<h2>Training and validation</h2><p>This model directory has no per-epoch history.</p>"
    # A diverged epoch's score is a placeholder below any NDCG: no point on the curve, none in the table.
    history = [without_diverged_score(h) for h in history]
    # Marked only where the history has that epoch (a directory's metrics.json may say another).
    shown = best_epoch if best_epoch is not None and any(h.get("epoch") == best_epoch for h in history) else None
    if best_epoch is None:
        which = "<p>Which epoch's weights the model holds is not recorded in its <code>metrics.json</code>.</p>"
    else:
        where = (
            ", marked in the chart and the table; the other epochs' weights are not in it"
            if shown is not None
            else "; its history has no row of that epoch, so nothing below is marked, and no epoch shown is the one "
            "evaluated"
        )
        which = (
            f"<p>The model evaluated holds the weights of epoch <b>{html.escape(str(best_epoch))}</b>, the one its "
            f"training kept (the best validation NDCG@10){where}.</p>"
        )
    marked = [
        {**h, "epoch": f"{h['epoch']} (evaluated)"} if shown is not None and h.get("epoch") == shown else h
        for h in history
    ]
    return (
        "<h2>Training and validation</h2>"
        + which
        + training_chart(history, shown)
        + _table(
            marked,
            ["epoch", "train_loss", *_VALIDATION_CURVES, "examples_per_s", "epoch_seconds"],
            "Every epoch trained",
        )
    )


ABLATION_COLUMNS = [
    "model",
    f"recall@{K}",
    f"ndcg@{K}",
    f"hr@{K}",
    f"mrr@{K}",
    f"repeat_recall@{K}",
    f"explore_recall@{K}",
    "seeds",
    "features_version",
    "epochs",
    "users",
]


def _features_match(row: Dict) -> Optional[bool]:
    """Whether an ablation row was measured on this code's feature definitions, the evaluated
    DATA's (jobs.evaluate refuses others); None where the row does not say, which is no yes."""
    version = row.get("features_version")
    return None if version is None else version == FEATURES_VERSION


def _ablations_section(ablations: Optional[Sequence[Dict]], source: Optional[str]) -> str:
    """The ``bench.ablations`` rows, as given (not re-run): their "\u00b1" is the spread of the
    row's seeds, not the paired standard error of the table above, and rows measured on another
    feature definition than the evaluated DATA's (this code's: jobs.evaluate refuses others) do
    not compare with the model's figures, which the page says in one line."""
    if not ablations:
        return (
            "<h2>Ablations</h2><p>No ablation results given: <code>python "
            "-m bench.ablations --data DATA</code> writes them.</p>"
        )
    where = f" Rows from <code>{html.escape(source)}</code>, not re-run by this report." if source else ""
    # Escaped: the rows are a user's file (jobs.evaluate refuses a features_version that is no integer).
    other = sorted({str(r["features_version"]) for r in ablations if _features_match(r) is False})
    warning = (
        f"<p><b>Warning:</b> rows of features version {html.escape(', '.join(other))} were measured on other feature "
        f"definitions than the evaluated DATA's (version {FEATURES_VERSION}): they do not compare with the "
        "table above.</p>"
        if other
        else ""
    )
    unknown = [str(r["model"]) for r in ablations if _features_match(r) is None]
    if unknown:
        warning += (
            f"<p><b>Warning:</b> {html.escape(', '.join(unknown))}: no features version recorded, so whether "
            f"they were measured on the evaluated DATA's feature definitions (version {FEATURES_VERSION}) is "
            "unknown; they may not compare with the table above.</p>"
        )
    return (
        "<h2>Ablations</h2><p>Each part switched off in turn (<code>bench.ablations</code>); rows "
        "with fewer seeds may come from another run (BENCHMARKS.md says which)."
        + where
        + " Here \u00b1 is the standard deviation over the row's seeds (how much a training varies), not "
        "the paired standard error of the table above; <i>epochs</i> is each training's budget.</p>"
        + warning
        + _table(ablations, ABLATION_COLUMNS, "Ablations: mean \u00b1 standard deviation over seeds", SEED_SD)
    )


def score_samples(
    ranker, period: Period, users: np.ndarray, negatives: int = 20, seed: int = 0
) -> Dict[str, np.ndarray]:
    """Model scores of each household's held-out purchases and of products it had not bought by
    the period's end."""
    rng = np.random.default_rng(seed)
    bought, other = [], []
    catalog = np.flatnonzero(ranker.candidates.known)
    for u in users:
        u = int(u)
        at = period.first_visit[u]
        truth = period.truth[u]
        pool = np.setdiff1d(catalog, bought_by_period_end(ranker.state.states, period, u))
        random = rng.choice(pool, size=min(negatives, len(pool)), replace=False)
        scores = ranker.score(u, np.concatenate([truth, random]), at)[0]  # one household context
        bought.append(scores[: len(truth)])
        other.append(scores[len(truth) :])
    return {"bought": np.concatenate(bought), "never_bought": np.concatenate(other)}


def score_chart(samples: Dict[str, np.ndarray], period_noun: str = "held-out period") -> str:
    """Log-scaled: the logQ-corrected model's probabilities are small and span decades. A group
    with no score (households that had bought every product the model knows) is left out and
    named in the title; "" when neither has one."""
    drawn = {k: np.log10(np.clip(v, 1e-12, 1.0)) for k, v in samples.items() if len(v)}
    if not drawn:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bins = np.linspace(min(v.min() for v in drawn.values()), 0, 41)
    labels = {"never_bought": "products never bought", "bought": f"bought in the {period_noun}"}
    for group, label in labels.items():
        if group in drawn:
            ax.hist(drawn[group], bins=bins, alpha=0.6, density=True, label=label)
    empty = [labels[group] for group in labels if group not in drawn]
    if empty:
        ax.set_title(f"no score to draw for: {', '.join(empty)}")
    ax.set_xlabel("log10 model score")
    ax.set_ylabel("density")
    ax.legend()
    return _png(fig, "histograms of the scores of bought and never-bought products")


def _median_words(scores: np.ndarray, none: str) -> str:
    """A group's scores in words: their median, or why there are none (a median of nothing is nan)."""
    return f"median {np.median(scores):.3g}" if len(scores) else f"none: {none}"


def _scores_section(samples: Dict[str, np.ndarray], households: int, period_noun: str) -> str:
    """The score distribution's medians and chart, an empty group said as such, not drawn."""
    bought = _median_words(samples["bought"], f"they bought nothing in the {period_noun}")
    never = _median_words(samples["never_bought"], "they had bought every product the model knows")
    return (
        f"<h2>Score distribution</h2><p>{households} households: scores of the products they bought in the "
        f"{period_noun} ({bought}) and of random products they never bought ({never}), at the moment of their "
        "first visit.</p>" + score_chart(samples, period_noun)
    )


def _product_label(ranker, product_ids: Sequence[int]) -> List[str]:
    vocabs = ranker.state.vocabs
    products = vocabs.products
    raw = products.raw_of(product_ids)
    dept = vocabs.departments.raw_of(products.column("department_index")[list(product_ids)])
    cat = vocabs.categories.raw_of(products.column("category_index")[list(product_ids)])
    return [
        f"{html.escape(str(r))} <small>{html.escape(str(c or ''))} / {html.escape(str(d or ''))}</small>"
        for r, d, c in zip(raw, dept, cat)
    ]


def _mean(values) -> float:
    """nan for no values, said as such by the paragraphs, without np.mean's warning of an empty mean."""
    return float(np.mean(values)) if len(values) else float("nan")


def _first_reason_over_uniform(ranking, attended: np.ndarray) -> float:
    """Mean over a ranking's recommendations of the first "because" product's weight against its
    share under uniform weights over the ``attended`` places (a product bought twice among the
    latest purchases holds two places: its uniform share is two)."""
    leads = []
    for because, null in zip(ranking.explanations, ranking.attention_null):
        if because and 1.0 - null > 1e-6:  # all on the null slot: no share to compare
            product, weight = because[0]
            uniform_share = np.count_nonzero(attended == product) * (1.0 - null) / len(attended)
            leads.append(weight / uniform_share)
    return _mean(leads)


def explanation_stats(ranker, period: Period, users: np.ndarray, exclude_purchased: bool = False) -> Dict[str, float]:
    """How much the attention behind "because you bought" says: its mean entropy over the
    households' top 10 (against the entropy of uniform weights over the same histories), the
    weight left on the attention's null slot (nothing in the history), the first "because"
    product's weight against its share under uniform weights (1 when the weights are uniform), and the
    share of households whose top 10 do not all name the same first "because" product (near
    uniform weights, a rounding can decide which)."""
    entropy, uniform, null, lead, differ = [], [], [], [], []
    at = np.array([period.first_visit[int(u)] for u in users], np.int64)
    rankings = ranker.rank(users, at, k=K, exclude_purchased=exclude_purchased, explain=True)
    occlusion = _occlusion_stats(rankings)
    for u, moment, ranking in zip(users, at, rankings):
        if ranking.cold_start or not any(ranking.explanations or []):
            continue  # nothing the model attends to (no history, or all of it on the unknown row)
        history, _ = ranker.state.states.timeline(int(u)).history(np.array([moment]), ranker.history_length)
        entropy.append(float(np.mean(ranking.attention_entropy)))
        # The model attends to the places whose product has a row of its own (the others: masked).
        attended = history[0][ranker.rows.product[history[0]] > 0]
        uniform.append(float(np.log(len(attended))))
        null.append(float(np.mean(ranking.attention_null)))
        lead.append(_first_reason_over_uniform(ranking, attended))
        firsts = {because[0][0] for because in ranking.explanations if because}
        differ.append(len(firsts) > 1)
    return {
        "households": len(entropy),
        "attention_entropy": _mean(entropy),
        "uniform_entropy": _mean(uniform),
        "null_weight": _mean(null),
        "first_reason_over_uniform": _mean([v for v in lead if not np.isnan(v)]),
        "share_with_different_reasons": _mean(differ),
        **occlusion,
    }


def _occlusion_stats(rankings) -> Dict[str, float]:
    """What the top 10's scores owe to the households' own purchases (:mod:`ncf.rank.reasons`):
    the share of recommended products the household bought before, their mean score, that score
    had the household never bought them, or nothing in their category, and the share of them
    whose score more than halves without their purchases."""
    reasons = [(score, reason) for r in rankings if r.reasons for score, reason in zip(r.scores, r.reasons)]
    repeats = [(score, reason) for score, reason in reasons if reason.days_bought]
    return {
        "reasons": len(reasons),
        "repeats": len(repeats),
        "repeat_share": _mean([bool(reason.days_bought) for _, reason in reasons]),
        "repeat_score": _mean([float(score) for score, _ in repeats]),
        "repeat_score_if_never_bought": _mean([reason.score_if_never_bought for _, reason in repeats]),
        "repeat_score_if_category_never_bought": _mean(
            [reason.score_if_category_never_bought for _, reason in repeats]
        ),
        "repeat_score_halved_share": _mean([reason.score_if_never_bought < score / 2 for score, reason in repeats]),
    }


def _reason_text(reason) -> str:
    """A recommendation's purchase timing and occluded scores, for the households' lists."""
    if reason is None:
        return ""
    if not reason.days_bought:
        return f"never bought (score {reason.score_if_category_never_bought:.3f} without its category); "
    gap = f", every {reason.typical_gap_days:.0f} days" if reason.typical_gap_days is not None else ""
    return (
        f"bought on {reason.days_bought} days, last {reason.days_since_last:.0f} days ago{gap}; "
        f"score {reason.score_if_never_bought:.3f} had it never been bought; "
    )


def _attention_paragraph(explained: Dict) -> str:
    """The attention's figures over the households it explains; with none (every household
    sampled a cold start, or its history all on products without a row) there is nothing to
    average, and it says so rather than "nan"."""
    if not explained["households"]:
        return (
            "<p>No household sampled here has a recommendation the attention explains (each is a cold start, "
            "or its history holds only products the model has no row of): no attention to summarize.</p>"
        )
    lead = explained["first_reason_over_uniform"]
    lead_words = (
        "the first reason's weight not comparable with uniform weights (all of it on the null slot)"
        if np.isnan(lead)
        else f"the first reason's weight {lead:.3f} times what uniform weights would give it"
    )
    return (
        "<p>Over the top 10 of "
        f"{explained['households']} households: mean entropy of the attention behind each recommendation "
        f"{explained['attention_entropy']:.2f} nats (uniform weights over the same histories: "
        f"{explained['uniform_entropy']:.2f}), mean weight left on no past purchase (the null slot) "
        f"{explained['null_weight']:.2f}, {lead_words}; households whose 10 "
        "recommendations do not all name the same first reason: "
        f"{100 * explained['share_with_different_reasons']:.0f}% (where the weights are near uniform, "
        "a rounding can decide which). <code>python -m bench.attention_effect</code> measures what the "
        "ranking loses when the attention is shown no history.</p>"
    )


def _reasons_paragraph(explained: Dict, exclude_purchased: bool = False) -> str:
    """The occlusion figures; without a recommended product bought before (every one, with
    ``exclude_purchased``) there is no repeat to average, and it says so rather than "nan"."""
    head = (
        "<h2>What the scores owe to the households' purchases</h2><p>Each recommendation scored again "
        "with the household's purchases of it removed, then with its purchases in the product's "
        "category removed (the API's <code>reason</code>): "
    )
    if not explained["reasons"]:
        return head + "no recommendation here has one (every household shown is a cold start).</p>"
    if not explained["repeats"]:
        why = " (<b>exclude_purchased</b> leaves them out)" if exclude_purchased else ""
        return head + (
            f"of the {explained['reasons']} recommendations, none is a product the household bought before{why}, "
            "so no score here owes anything to the household's purchases of the product itself.</p>"
        )
    return head + (
        f"of the {explained['reasons']} recommendations, "
        f"{100 * explained['repeat_share']:.0f}% are products the household bought before; they score "
        f"{explained['repeat_score']:.3f} on average, {explained['repeat_score_if_never_bought']:.3f} had "
        "the household never bought them, and "
        f"{explained['repeat_score_if_category_never_bought']:.3f} had it bought nothing in their category; "
        f"{100 * explained['repeat_score_halved_share']:.0f}% of them lose more than half their score without "
        "their own purchases.</p>"
    )


def households_html(ranker, period: Period, users: np.ndarray, recent: int = 8, exclude_purchased: bool = False) -> str:
    """Each household's latest purchases before the moment ranked, and its top 10 with reasons."""
    parts = []
    vocabs = ranker.state.vocabs
    for u in users:
        u = int(u)
        at = period.first_visit[u]
        timeline = ranker.state.states.timeline(u)
        before = timeline.timestamps < at
        last = timeline.products[before][::-1][:recent]
        ranking = ranker.rank([u], [at], k=K, exclude_purchased=exclude_purchased, explain=True)[0]
        hits = set(period.truth[u].tolist())
        recs = []
        reasons = ranking.reasons or [None] * len(ranking.products)
        attends = ranker.model.attends
        for product, score, because, reason in zip(
            ranking.products, ranking.scores, ranking.explanations or [[]] * K, reasons
        ):
            because_text = ", ".join(
                f"{html.escape(str(p))} ({w:.2f})"
                for p, w in zip(vocabs.products.raw_of([b for b, _ in because]), [w for _, w in because])
            )
            because_part = f"because: {because_text or 'no history'}" if attends else ""
            mark = " &#10003;" if int(product) in hits else ""
            recs.append(
                f"<li>{_product_label(ranker, [int(product)])[0]} "
                f"<b>{score:.3f}</b>{mark}<br><small>{_reason_text(reason)}{because_part}</small></li>"
            )
        raw_user = vocabs.users.raw_of([u])[0]
        parts.append(
            f'<div class="hh"><div><b>household {html.escape(str(raw_user))}</b><br>recent purchases:<ol>'
            + "".join(f"<li>{label}</li>" for label in _product_label(ranker, last.tolist()))
            + "</ol></div><div>recommended (&#10003; = bought in the "
            f"{_period_noun(period)}):<ol>{''.join(recs)}</ol></div></div>"
        )
    return "".join(parts)


def _main_section(
    rows: Sequence[Dict],
    ablations: Optional[Sequence[Dict]],
    source: Optional[str],
    period_name: str = TEST,
    exclude_purchased: bool = False,
) -> str:
    """The model against the baselines: this run's one training of the model, labelled as such,
    and the ablations' default model over its seeds beside it where they have it and it compares
    (bench.ablations measures the test weeks, past purchases included). The rows themselves,
    which jobs.evaluate prints, keep their names."""
    shown = [{**row, "model": f"{MODEL} (this run)"} if row.get("model") == MODEL else row for row in rows]
    comparable = period_name == TEST and not exclude_purchased
    model_row = next((row for row in rows if row.get("model") == MODEL), {})
    recorded = _recorded_model_row(ablations or [], source, model_row.get("users")) if comparable else None
    if recorded is not None:  # beside this run's row, which the baselines' differences are to
        after = next((i + 1 for i, row in enumerate(rows) if row.get("model") == MODEL), 0)
        shown.insert(after, recorded)
    seeds_words = (
        f" {html.escape(recorded['model'])}: the mean over bench.ablations' seeds of the default model, "
        "trained on the DATA and with the epoch budget that file names, not re-run here, \u00b1 their standard "
        "deviation (how much a training varies); (this run) is the one training evaluated here."
        if recorded is not None
        else ""
    )
    return (
        "<h2>Model against the baselines</h2>"
        + _table(shown, METRIC_COLUMNS, "The model against each baseline", PAIRED_SE)
        + _not_evaluated(rows)
        + f"<p><small>recall@{K}: hits in the top {K} over min({K}, the products the household bought in the "
        f"period); recall_lit@{K}: hits over all of them (so far lower where households buy many products). "
        f"next_basket_*@{K}: against the household's next basket alone (its first in the period with catalog "
        "products), the protocol of the next-basket literature (TIFU-KNN, the TOIS 2023 reality check), whose "
        "published figures compare with these columns only. first_stage_recall: for the scorers that rerank "
        "a first stage's candidates, the share of the period's relevant products among them: no reranking "
        f"of them can find more, so recall_lit@{K} stays below it. "
        "*_minus_model: the baseline's figure less the model's, household by household over "
        "the same households, \u00b1 the paired standard error: a difference of two standard errors or more "
        "is measurable on these households, which the seeds' spread does not say."
        + seeds_words
        + "</small></p>"
        + metrics_chart(rows)
    )


def _recorded_model_row(ablations: Sequence[Dict], source: Optional[str], users: Optional[int]) -> Optional[Dict]:
    """The ablations' row of the default model over several seeds, of the evaluated DATA's
    features and of as many households as this run's model row (``users``: another DATA's, or a
    ``--max-users`` sample, does not compare), as the main table shows it; None where they have
    none. Its cells are written here, \u00b1 its seeds' sd: the main table's \u00b1 is the paired
    standard error."""
    for row in ablations:
        seeds = row.get("seeds", 1)
        same_households = users is not None and row.get("users") == users
        if (
            row.get("model") == MODEL
            and isinstance(seeds, int)
            and seeds > 1
            and _features_match(row)
            and same_households
        ):
            where = f"recorded: {source}" if source else "recorded"
            # Its epoch budget in its name: a demo of --epochs 1 shows it beside a 3-epoch row.
            budget = f", {row['epochs']} epochs at most" if isinstance(row.get("epochs"), int) else ""
            return {
                **{c: cell_text(row, c, SEED_SD) for c in METRIC_COLUMNS},
                "model": f"{MODEL}, {seeds} seeds{budget} ({where})",
            }
    return None


def _not_evaluated(rows: Sequence[Dict]) -> str:
    """The baselines without a row (left out by the job's options, or skipped by the evaluation,
    which only logs why): named, so that none vanishes from the table unsaid."""
    evaluated = {row.get("model") for row in rows}
    missing = [name for name in BASELINE_ORDER if name not in evaluated]
    return f"<p>Not evaluated in this run: {html.escape(', '.join(missing))}.</p>" if missing else ""


def _period_noun(period: Period) -> str:
    """What the households' purchases in ``period`` were: held out only in the test weeks."""
    return "held-out period" if period.name == TEST else f"{period.name} period (not held out)"


def _period_words(period: Period, rows: Sequence[Dict]) -> str:
    """The period and its households as the rows have them: "held-out" only for the test weeks
    (the baselines are tuned and the epoch chosen on the validation weeks), and the households
    ranked (a --max-users sample) beside the period's own count."""
    not_held_out = "period (not held out: the baselines were tuned and the epoch chosen on it)"
    kind = "held-out period" if period.name == TEST else not_held_out
    ranked = rows[0].get("users") if rows else None
    households = f"{len(period.users):,} households"
    if ranked is not None and ranked != len(period.users):
        households = f"a sample of {ranked:,} of its {len(period.users):,} households"
    return f"{kind} <b>{period.name}</b> ({households}"


def write_report(
    output: str,
    ranker,
    version: str,
    period: Period,
    rows: Sequence[Dict],
    history: Optional[Sequence[Dict]] = None,
    ablations: Optional[Sequence[Dict]] = None,
    ablations_source: Optional[str] = None,
    score_users: int = 100,
    households: int = 4,
    exclude_purchased: bool = False,
    best_epoch: Optional[int] = None,
) -> str:
    """Writes ``output/report.html`` and returns its path (``ablations_source``: the file the
    ablation rows came from, named in the report; ``exclude_purchased``: the rows' mode, which
    the households and the attention figures then rank in too; ``best_epoch``: the epoch
    whose weights the model holds, as its ``metrics.json`` says, marked among the history's)."""
    users = sample_users(period.users, score_users, seed=1)
    sections = [
        f"<h1>AdvancedNCF evaluation report</h1><p>model version <b>{html.escape(version)}</b>; "
        + _period_words(period, rows)
        + f", full ranking over {int(ranker.candidates.known.sum()):,} products (the model and the boosted ranker "
        "rerank their first stage's candidates, drawn from all of them; the other baselines score every one), "
        "each household ranked at its first visit)"
        + (
            "; <b>exclude_purchased</b>: every ranking leaves out what the household bought before, and only "
            "products new to it count as bought (households that bought nothing new are left out)"
            if exclude_purchased
            else ""
        )
        + ".</p>",
        _main_section(rows, ablations, ablations_source, period.name, exclude_purchased),
    ]
    sections.append(_training_section(history, best_epoch))
    sections.append(_ablations_section(ablations, ablations_source))
    sections.append(_scores_section(score_samples(ranker, period, users), len(users), _period_noun(period)))
    explained = explanation_stats(ranker, period, users, exclude_purchased)
    sections.append(
        (
            "<h2>What the attention says</h2>"
            + (
                _attention_paragraph(explained)
                if ranker.model.attends
                else "<p>Nothing: this model was trained without its attention over the household's "
                "history (<code>use_attention</code> or <code>use_mlp</code>, which carries it, off).</p>"
            )
        )
        + _reasons_paragraph(explained, exclude_purchased)
    )
    sections.append(
        "<h2>Households</h2>" + households_html(ranker, period, users[:households], exclude_purchased=exclude_purchased)
    )
    return _write_page(output, "".join(sections) + _IMAGE_CHECK)


def write_placeholder(output: str, version: str) -> str:
    """Replaces ``output/report.html``, before an evaluation's minutes, with a page saying the
    evaluation of ``version`` has not finished: one that then fails or is interrupted (a rerun in
    the same directory) leaves no previous run's report, about another model, beside its rows.
    Replaced whole, so there is always a page there, never none and never half of one."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return _write_page(
        output,
        f"<h1>AdvancedNCF evaluation report</h1><p>The evaluation of model version <b>{html.escape(version)}</b> "
        f"started at {started} and has not finished: it is running, or it failed or was interrupted (its log "
        "says which). The report replaces this page when the evaluation ends.</p>",
    )


def write_not_evaluated(output: str, version: str) -> str:
    """Replaces ``output/report.html`` with a page saying model version ``version`` has not been
    evaluated: a run that replaced the model a report was about, then stopped before its
    evaluation (the demo's refit, after its validated export), left that report beside it."""
    return _write_page(
        output,
        f"<h1>AdvancedNCF evaluation report</h1><p>Model version <b>{html.escape(version)}</b> has not been "
        "evaluated: the run that trained it stopped before its evaluation (its log says why). The report of the "
        "model it replaced was here.</p>",
    )


def _write_page(output: str, body: str) -> str:
    """``output/report.html`` replaced whole (UTF-8, as the page declares): a write killed midway
    leaves the page that was there."""
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, REPORT)
    write_text(
        path,
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>AdvancedNCF "
        f"report</title>{_STYLE}</head><body>{body}</body></html>",
    )
    return path

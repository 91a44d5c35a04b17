"""The Ray Serve application: a FastAPI ingress deployment over one model directory.

Run it::

    python -m jobs.deploy --model MODEL [--host 127.0.0.1] [--port 8000]     # or:
    serve run serve/config.yaml

Both give Serve's HTTP proxy the edge limits of :mod:`serve.limits` (through
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``). ``serve run serve.app:build_app model=...``
deploys the same app without them: the proxy then honours a client's
``x-request-timeout-seconds`` (a value of 0 lifts the request timeout) and holds a replica slot
for a slow body, and its timeout answers are Serve's plain-text 408s.

Why it is built this way:

- The model is loaded in ``reconfigure(user_config)``, not ``__init__``: a new model directory
  (or candidate count, or ``ui``) is then a ``user_config`` change, which Serve applies to the
  running replicas in place, with no restart and no downtime. ``serve.run``/``jobs.deploy``
  with a new ``model`` argument does exactly that; ``serve deploy`` of a config file with new
  ``args`` restarts the replicas instead (Serve hashes a config file's args into the
  deployment's version, see :func:`code_version`). The user_config holds fingerprints of the
  model's and DATA's content too (:class:`ServeSettings`), so a new model or DATA written to the
  same path is a change as well: Serve calls ``reconfigure`` only when the user_config differs.
  (The fingerprints are taken when the app is built: on every ``jobs.deploy``/``serve.run``,
  but ``serve deploy`` of a config file whose args did not change does not build it again.)
- ``/recommend`` goes through ``@serve.batch``: concurrent requests to one replica are grouped
  into one call of :meth:`ModelService.recommend_many`, all answered by the same model version.
  Explained requests are batched apart, at most :data:`MAX_EXPLAINED_BATCH_SIZE` at a time, so
  that a batch never holds more explained items than one ``/recommend/batch`` may ask for, and a
  plain request never waits for explanations.
- A rollout never takes the service down: the new model is checked and loaded beside the old
  one (:meth:`ModelService.load`); if that fails, ``reconfigure`` keeps the old model serving,
  says why on ``/healthz`` (``rollout_error``) and returns normally, because a ``reconfigure``
  that raises makes Serve stop the replica, healthy model and all. ``build_app`` refuses a
  model directory that fails :func:`ncf.model.integrity.verify_model_dir` before anything is
  deployed, and a ``data`` whose state does not load or agree with itself
  (:func:`ncf.model.integrity.verify_data_state`). Serve still holds the failed user_config as
  its target (a replica it starts later would load it and fail), so ``jobs.deploy`` deploys the
  serving one again (:func:`restore_app`) and exits 2 (1 where the replicas still differ after it:
  Serve counts a replica whose ``reconfigure`` kept its model as on the target all the same; 1
  also where the restored model's paths now hold other files or cannot be read, which replicas
  started later fail on). A
  replica with no model yet (one of new code, or one started from zero replicas) has nothing to
  keep and raises; after Serve's retries the rollout is DEPLOY_FAILED, and ``jobs.deploy``
  deploys the settings served before the rollout again as well (where a replica served them when
  the job started) and exits 1.
- ``autoscaling_config`` adds replicas when each has more than ``target_ongoing_requests``
  requests in flight and removes them when idle; replicas ask for a fraction of a CPU so
  that several fit on a small machine beside the proxy.
- Overload is shed, not queued without end: past ``max_ongoing_requests`` per replica, at most
  ``max_queued_requests`` wait at the proxy; more get 503 with ``Retry-After`` at once.
"""

# No `from __future__ import annotations` here: Serve rebuilds the ingress routes in the replica
# and cannot resolve string annotations (the request models become unresolved ForwardRefs and
# /openapi.json fails).

import asyncio
import contextvars
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Literal, NamedTuple, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ncf.code import source_digest
from ncf.errors import InputError
from ncf.model.files import read_config
from ncf.rank.candidates import RankingSettings
from ncf.rank.ranker import MAX_K
from ncf.rank.recommender import PassNeeded
from ncf.rank.state import check_model_and_data
from ncf.registry import resolve_model
from serve import explore, ui
from serve.api import (
    MAX_BASKETS,
    MAX_EXPLAINED_ITEMS,
    BatchRecommendRequest,
    BatchRecommendResponse,
    Health,
    HistoryRequest,
    HistoryResponse,
    HouseholdSearchRequest,
    HouseholdSearchResponse,
    NotReady,
    ProductsRequest,
    ProductsResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    create_app,
    describe_errors,
)
from serve.service import ModelService, ServeSettings, short_first_stage

DEPLOYMENT_NAME = "Recommender"
MAX_BATCH_SIZE = 16
# Each explained item is scored twice more, and a batch's requests are all answered when its last
# is ranked: 16 explained requests at k = 100 held each of them for 1,600 items (about 3 s), where
# a /recommend/batch may ask for MAX_EXPLAINED_ITEMS. Explained requests are batched apart, as many
# as MAX_EXPLAINED_ITEMS holds at the largest k.
MAX_EXPLAINED_BATCH_SIZE = MAX_EXPLAINED_ITEMS // MAX_K
BATCH_WAIT_S = 0.002  # short: under light load a request should not wait for company
# Above the batch size, so that a full batch can form; the autoscaler reacts well before.
MAX_ONGOING_REQUESTS = 2 * MAX_BATCH_SIZE
# Requests waiting at a proxy for a free replica slot, beyond which they are shed (503): about
# two full rounds of every replica's slots, so a burst waits and a flood is refused.
MAX_QUEUED_REQUESTS = 64
SHED_RETRY_AFTER_S = 1

logger = logging.getLogger("ray.serve")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

app = create_app()


# Defined before the deployment class: Serve pickles the class when it is decorated, with the
# module globals it uses as they are at that moment.
def _redacted(message: str, user_config: Dict, limit: int = 500) -> str:
    """One line, with the server's paths (model and DATA directories) replaced by their names
    in the user_config, for /healthz: clients learn what failed, not where files live."""
    for key in ("model_dir", "data"):
        path = user_config.get(key) if isinstance(user_config, dict) else None
        if isinstance(path, str) and path:
            for form in sorted({os.path.abspath(path), path}, key=len, reverse=True):
                message = message.replace(form, f"<{key}>")
    return " ".join(message.split())[:limit]


class Serving(NamedTuple):
    """What a replica serves: its model (None before one) and why the last rollout failed (None
    when it did not). One immutable pair in one attribute, replaced whole by ``reconfigure`` (on the
    replica's event loop, while the routes' work reads it from worker threads), so that /healthz
    never reads a model with another rollout's error."""

    service: Optional[ModelService]
    rollout_error: Optional[str]


ROLLOUT_SURGE_PERCENT = 1
# Threads of a replica's /recommend/batch and /score (an explained batch is seconds of CPU): the
# most of their work that runs at once, abandoned or not, beside the /recommend batches.
HEAVY_ROUTE_THREADS = 3


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=SHED_RETRY_AFTER_S),
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    ray_actor_options={"num_cpus": 0.5},
    # New code (or a config file's new args, which Serve hashes into the version) restarts the
    # replicas; by default Serve stops each before its replacement is up. One extra replica
    # (1% rounds up to one) keeps the old ones serving until their replacements are ready.
    max_surge_percent=ROLLOUT_SURGE_PERCENT,
)
@serve.ingress(app)
class RecommenderDeployment:
    """One replica: a :class:`ModelService` swapped as a whole on every reconfigure."""

    def __init__(self, threads: int = 1) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        # Several replicas share a few cores: one compute thread each. BLAS (numpy's first-stage
        # matrix product) needs its own limit: its idle threads spin, and on the demo model
        # they more than doubled the CPU a request costs (31 -> 12 ms).
        torch.set_num_threads(threads)
        threadpool_limits(threads)
        self._serving = Serving(None, None)
        # Serve can call reconfigure before the last call ended: a replica whose rank a scale-down
        # changed stays RUNNING while it reconfigures, so a rollout's call can follow at once, and
        # a restarted controller sends the next deploy's to a replica still loading. Applied one
        # at a time, in the order they reach the replica, or a slow reload of a refused model
        # finishing after a restore's quick one would undo it. An asyncio lock: its waiters go first
        # come, first served (a threading lock's, in Serve's thread pool, in any order).
        self._reconfiguring = asyncio.Lock()
        # Loads on a thread of their own: not one of the few threads requests are ranked on (the
        # loop's default executor), held for as long as a model takes to load.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._heavy = ThreadPoolExecutor(HEAVY_ROUTE_THREADS, thread_name_prefix="heavy-route")

    async def _on_heavy_thread(self, work, *args):
        """``work(*args)`` on the heavy routes' own threads (:data:`HEAVY_ROUTE_THREADS`): a
        request cancelled before its turn is never computed, and the /recommend batches and the
        explorer's lookups (the loop's default executor) never wait behind an explained batch."""
        context = contextvars.copy_context()  # as asyncio.to_thread: Serve's request context goes along
        run = functools.partial(context.run, work, *args)
        return await asyncio.get_running_loop().run_in_executor(self._heavy, run)

    async def reconfigure(self, user_config: Dict) -> None:
        """Loads the model named by ``user_config`` (see :class:`ServeSettings`), then swaps it in.

        When that fails and a model is serving, the replica keeps serving it and reports the
        failure on /healthz; it does not raise, since Serve stops a replica whose reconfigure
        raises. With no model yet (a new replica) it raises: there is nothing to keep serving,
        and Serve stops the replica (after its retries, the rollout is DEPLOY_FAILED; jobs.deploy
        then deploys the settings served before again, :func:`serve.rollout.restore_previous`).
        """
        async with self._reconfiguring:
            previous = self._serving.service

            def load() -> ModelService:
                return ModelService.load(ServeSettings.from_user_config(user_config), previous=previous)

            try:
                # In a thread: the replica's event loop answers requests while a model loads.
                service = await asyncio.get_running_loop().run_in_executor(self._loader, load)
            except Exception as e:
                if previous is None:
                    raise
                self._serving = Serving(previous, _redacted(f"{type(e).__name__}: {e}", user_config))
                # A user_config that is no dict fails here too: an AttributeError raised while saying so
                # would make Serve stop the replica serving the good model.
                model_dir = user_config.get("model_dir") if isinstance(user_config, dict) else None
                logger.error(f"rollout of {model_dir} failed, still serving {previous.version}: {e}")
                return
            self._serving = Serving(service, None)

    def serving_user_config(self) -> Optional[Dict]:
        """The user_config of the model this replica serves, None before one: after a failed
        rollout, the previous good one, which jobs.deploy deploys again (:func:`restore_app`).
        Bare, as jobs.deploy of any version reads it (a code rollback runs an older one)."""
        service = self._serving.service
        return None if service is None else service.settings.user_config()

    def served_settings(self) -> Dict:
        """:meth:`serving_user_config` and this replica's tag, so that a deploy knows it heard
        every replica (:func:`serve.launch.serving_user_config`)."""
        return {"replica": serve.get_replica_context().replica_tag, "user_config": self.serving_user_config()}

    def _ready(self) -> ModelService:
        service = self._serving.service
        if service is None:
            raise NotReady("no model loaded yet")
        return service

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> Dict:
        """200 with the version of the model serving once one is loaded (and ``rollout_error``
        when the last rollout failed and that model kept serving), 503 before. On the event loop:
        never behind the ranking work in the worker threads."""
        # One read of the pair: a model read apart from its error could report one rollout's
        # model with another's error.
        service, rollout_error = self._serving
        if service is None:
            raise NotReady("no model loaded yet")
        return {**service.health(rollout_error), "replica": serve.get_replica_context().replica_tag}

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend(self, request: RecommendRequest) -> Dict:
        """Top-``k`` products for one user at ``at`` (unknown users: cold start, flagged)."""
        service = self._ready()
        # A past day not kept is ranked on its own: its pass (seconds here, minutes at a billion
        # purchases) would hold the batch, and every request batched with it, for its length.
        batched = self._recommend_explained if request.explain else self._recommend_batched
        answer = None if service.needs_pass(request) else await batched(request)
        if answer is None or isinstance(answer, PassNeeded):  # not kept, or no longer by the batch's turn
            return await asyncio.to_thread(self._ready().recommend, request)
        if isinstance(answer, Exception):  # this request's own refusal; its batch was answered
            raise answer
        return answer

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _recommend_batched(self, requests: List[RecommendRequest]) -> List[Dict]:
        return await self._rank_batch(requests)

    @serve.batch(max_batch_size=MAX_EXPLAINED_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _recommend_explained(self, requests: List[RecommendRequest]) -> List[Dict]:
        return await self._rank_batch(requests)

    async def _rank_batch(self, requests: List[RecommendRequest]) -> List[Dict]:
        # In a thread (the event loop's default executor: Ray sizes it from the replica's CPUs, five
        # at half a CPU): ranking is seconds of CPU for an explained batch, which on the event loop
        # would stall every other route meanwhile. No pass runs here (start_passes False): a day
        # not kept is the route's (PassNeeded), whose wait for a pass it starts is bounded
        # (PASS_WAIT_S).
        return await asyncio.to_thread(self._ready().recommend_many, requests, False)

    # The routes below are async and hand their work to threads of a bounded pool, not plain
    # FastAPI routes: those run in anyio's pool, whose thread goes on computing after Serve
    # cancels the request (a client gone, the request timeout) and whose slot is free again at
    # once, so abandoned work piled up without bound. Here a request cancelled before its turn is
    # never computed: the heavy routes run on threads of their own (HEAVY_ROUTE_THREADS), the
    # explorer's lookups on the loop's default executor (Ray's: ceil(num_cpus) + 4 threads).

    @app.post("/recommend/batch", response_model=BatchRecommendResponse, response_model_exclude_none=True)
    async def recommend_batch(self, request: BatchRecommendRequest) -> Dict:
        """Top-``k`` products for each of up to MAX_BATCH_USERS users, in request order."""
        return await self._on_heavy_thread(self._ready().recommend_batch, request)

    @app.post("/score", response_model=ScoreResponse)
    async def score(self, request: ScoreRequest) -> Dict:
        """Purchase probabilities of the given products (unknown product ids: 422 naming them)."""
        return await self._on_heavy_thread(self._ready().score, request)

    # -- looking at a household (serve/explore.py) and the explorer page (serve/ui.py) ----------

    @app.post("/history", response_model=HistoryResponse)
    async def history(self, request: HistoryRequest) -> Dict:
        """The household's latest baskets before ``at``, most recent first, with product labels."""
        return await asyncio.to_thread(explore.history, self._ready(), request)

    @app.post("/products", response_model=ProductsResponse)
    async def products(self, request: ProductsRequest) -> Dict:
        """Department and category of each product (unknown product ids: 422 naming them)."""
        return await asyncio.to_thread(explore.products, self._ready(), request)

    @app.post("/households", response_model=HouseholdSearchResponse)
    async def households(self, request: HouseholdSearchRequest) -> Dict:
        """Household ids that start with ``prefix``."""
        return await asyncio.to_thread(explore.search_households, self._ready(), request)

    # Whether the page is on is the serving model's setting: before a model loads, every /ui path
    # is the 503 of the other routes (with Retry-After), not the 404 of a deployment without it.
    @app.get("/ui", include_in_schema=False)
    def explorer_page(self) -> Response:
        return ui.asset(ui.PAGE, enabled=self._ready().settings.ui)

    @app.get("/ui/", include_in_schema=False)
    def explorer_page_slash(self, request: Request) -> Response:
        return ui.to_page(self._ready().settings.ui, request.url.query)

    @app.get("/ui/config", include_in_schema=False)
    def explorer_config(self) -> Dict:
        service = self._ready()
        return ui.config(service.settings.ui, service.moment(None), service.version, MAX_K, MAX_BASKETS)

    @app.get("/ui/{name}", include_in_schema=False)
    def explorer_asset(self, name: str) -> Response:
        enabled = self._ready().settings.ui  # first: loading is a 503 and an off page its 404 here too
        if enabled and name == ui.PAGE:  # only at /ui: its relative links would not resolve from /ui/explorer.html
            raise HTTPException(status_code=404, detail="the explorer page is at /ui")
        return ui.asset(name, enabled=enabled)


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (``serve run serve.app:build_app key=value ...`` or the
    ``args`` of an application in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="model directory to serve, or current (the model registry's current version, resolved when "
        "the app is built: deploying again after a rollback serves the previous model)"
    )
    data: Optional[str] = Field(
        None, description="DATA directory whose histories the model ranks from (default: the model's own state)"
    )
    candidates: Optional[int] = Field(
        None, ge=MAX_K, description="first-stage candidates re-ranked, at least the largest k (default: the model's)"
    )
    default_at: Literal["now", "data-end"] = "now"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: Optional[int] = Field(
        None,
        ge=1,
        description="replicas a first deploy starts with (default: Serve's, min_replicas; jobs.deploy passes "
        "max(min_replicas, 1) to a first deploy). Unset, a rollout keeps the replicas the autoscaler runs; set, "
        "Serve resets them to it on every rollout (a changed user_config)",
    )
    target_ongoing_requests: float = Field(4, gt=0)
    upscale_delay_s: float = Field(5, ge=0)
    downscale_delay_s: float = Field(30, ge=0)
    # Ray wants it above the replicas' metrics interval (10 s); below, the autoscaler sees no data.
    look_back_period_s: float = Field(30, gt=10, description="window the ongoing requests are averaged over")
    num_cpus: float = Field(0.5, gt=0, description="CPUs each replica requests")
    memory_gb: Optional[float] = Field(
        None,
        gt=0,
        description="memory each replica asks Ray for, GiB (default none: Ray places replicas by CPUs only; "
        "see replica_memory_bytes)",
    )
    max_ongoing_requests: int = Field(MAX_ONGOING_REQUESTS, ge=1, description="requests a replica works on at once")
    max_queued_requests: int = Field(
        MAX_QUEUED_REQUESTS, ge=1, description="requests waiting at a proxy for a replica; beyond: 503"
    )
    ui: bool = Field(False, description="serve the explorer page at /ui (where Serve binds: 127.0.0.1 by default)")


def build_app(args: Dict) -> Application:
    """The application for ``args`` (a dict or :class:`AppArgs`); checks the settings here, so a
    typo fails the deploy command rather than the replicas."""
    a = _validated(args)
    return _application(a, _settings_of(a))


def app_of(args: Dict, settings: ServeSettings, runtime_env: Optional[Dict] = None) -> Application:
    """:func:`build_app`'s application of ``settings`` (:func:`serve_settings`, checked once):
    ``jobs.deploy`` builds it once it knows whether an app of ours serves already (a first
    deploy's ``initial_replicas``). ``runtime_env``: the replicas' (the job's own where None,
    as Serve sets it; :func:`serve.rollout.kept_runtime_env`)."""
    return _application(_validated(args), settings, runtime_env)


def serve_settings(args: Dict) -> ServeSettings:
    """``args``' model and DATA as replicas load them (real paths, fingerprints), checked here."""
    return _settings_of(_validated(args))


def _settings_of(a: AppArgs) -> ServeSettings:
    # Real paths: a replica started later (autoscaling, a replacement) must load what this one
    # verified, not what a blue/green link points at by then.
    model_dir = os.path.realpath(resolve_model(a.model))
    data = os.path.realpath(a.data) if a.data else None
    check_model_and_data(model_dir, data)  # fail here, with the path, not in every replica
    # The directory's own first stage answers every k unless --candidates says more. Sizes a
    # replica cannot read (an unknown name: RankingSettings.of_model) are left to the replicas,
    # whose refusal the rollout reports (the tests' device for a model only loading refuses).
    kept = read_config(model_dir).get("ranking", {}).get("candidates", RankingSettings.candidates)
    if a.candidates is None and isinstance(kept, int) and not isinstance(kept, bool) and kept < MAX_K:
        raise InputError(short_first_stage(model_dir, kept))
    # Takes the fingerprints of the model and DATA now, into the user_config (ServeSettings).
    return ServeSettings.from_user_config(
        {"model_dir": model_dir, "candidates": a.candidates, "default_at": a.default_at, "data": data, "ui": a.ui}
    )


def restore_app(args: Dict, user_config: Dict, runtime_env: Optional[Dict] = None) -> Application:
    """The application of ``args`` serving ``user_config`` (a replica's
    :meth:`RecommenderDeployment.serving_user_config`) instead of ``args``' model and options.

    After a failed rollout the replicas keep the old model, but Serve's target is the new
    user_config, which every replica started later (autoscaling, a replacement) would fail to
    load. Deploying this makes the settings that serve the target again; the running replicas'
    reconfigure then reuses their model."""
    return app_of(args, ServeSettings.from_user_config(user_config), runtime_env)


def _validated(args: Dict) -> AppArgs:
    try:
        a = AppArgs.model_validate(dict(args))
    except ValidationError as e:
        raise ValueError(f"bad application args: {describe_errors(e.errors())}") from None
    if a.max_replicas < max(a.min_replicas, 1):
        raise ValueError(
            f"max_replicas (--max-replicas) {a.max_replicas} is below min_replicas (--min-replicas) {a.min_replicas}"
        )
    if a.initial_replicas is not None and not max(a.min_replicas, 1) <= a.initial_replicas <= a.max_replicas:
        raise ValueError(
            f"initial_replicas {a.initial_replicas} is outside [{max(a.min_replicas, 1)}, {a.max_replicas}] "
            "(min_replicas, at least 1, to max_replicas)"
        )
    return a


def _application(a: AppArgs, settings: ServeSettings, runtime_env: Optional[Dict] = None) -> Application:
    asks = {"num_cpus": a.num_cpus, **({"memory": int(a.memory_gb * 2**30)} if a.memory_gb else {})}
    return (
        RecommenderDeployment.options(
            user_config=settings.user_config(),
            max_ongoing_requests=a.max_ongoing_requests,
            max_queued_requests=a.max_queued_requests,
            autoscaling_config={
                "min_replicas": a.min_replicas,
                # Only where asked (a first deploy): Ray 2.60 resets a deployment whose config
                # changed, as every rollout's user_config does, to a set initial_replicas, and an
                # app the autoscaler had scaled up dropped to it; unset, the target stays.
                "initial_replicas": a.initial_replicas,
                "max_replicas": a.max_replicas,
                "target_ongoing_requests": a.target_ongoing_requests,
                "upscale_delay_s": a.upscale_delay_s,
                "downscale_delay_s": a.downscale_delay_s,
                "look_back_period_s": a.look_back_period_s,
            },
            ray_actor_options={**asks, **({"runtime_env": runtime_env} if runtime_env is not None else {})},
        )
        .options(version=code_version(), _internal=True)
        .bind()
    )


def replica_memory_bytes(model_dir: str, data: Optional[str] = None) -> int:
    """About the most a replica of ``model_dir`` holds: what a scoring actor of every household
    holds (:func:`ncf.batch.scoring.actor_memory`: 4,876 MiB measured at 10M x 1M; a ready
    replica held 4,426 MiB there), plus, while a rollout loads the next model and its state
    beside the ones serving, a second copy of all but the process's own base. The households
    are those of the state it ranks from: ``data``'s where given (fresh data holds households
    the model never saw), the model's own otherwise."""
    from ncf.batch.scoring import ACTOR_BASE_BYTES, actor_memory
    from ncf.data import layout
    from ncf.model.directory import ModelDir

    households = int(ModelDir(model_dir).config["model"]["num_users"])
    sizes = layout.DataStats(data).vocab_sizes if data else None
    if sizes and sizes.get("num_users"):
        households = max(households, int(sizes["num_users"]))
    return 2 * actor_memory(model_dir, households) - ACTOR_BASE_BYTES


def code_version() -> str:
    """The deployment's version: a hash of the project's Python source (serve/ and ncf/) and of
    the explorer page's files (``serve/static/``, which each replica reads once).

    Serve replaces every replica when the version changes and only calls ``reconfigure`` on the
    running ones when it does not. Left unset, ``serve.run`` draws a random version on each call,
    so a model rollout would stop the healthy replica before its replacement loaded the new
    model, and a bad model would leave nothing serving. With this version a model rollout is a
    ``user_config`` change applied in place (the old model keeps serving if the new one fails),
    while new code still restarts the replicas, each old one serving until its replacement is up
    (:data:`ROLLOUT_SURGE_PERCENT`). (``Deployment.options(version=...)`` needs its ``_internal``
    flag; for a config file, ``serve deploy``, Serve sets the version itself from the import path,
    runtime environment and args, so new args restart the replicas too.)
    """
    static = os.path.join("serve", "static")
    return source_digest(("serve", "ncf"), also=lambda folder, name: folder == static and name in ui.ASSETS, root=REPO)

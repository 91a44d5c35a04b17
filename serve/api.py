"""The HTTP contract of the Serve application: request and response models, limits, errors.

Everything here is plain FastAPI + pydantic (no Ray), so the contract can be read in one place
and checked without a cluster. The routes themselves live on the deployment class
(:mod:`serve.app`), because Serve binds FastAPI routes to the replica's methods.

Every error past the HTTP parser, whatever its cause, is JSON ``{"error": "<message>", ...}``
with a 4xx status for bad input: FastAPI's validation errors (malformed JSON, wrong types,
limits) become 422 with a message listing the first problems (:data:`MAX_ERRORS_LISTED`) and
how many more. A body FastAPI cannot decode at all (bytes that are not UTF-8, UTF-16 or UTF-32
text, JSON nested deeper than Python's recursion limit, or a number Python will not read: an
integer of more than 4,300 digits) gets 400 ``{"error": "There was an error parsing the body"}``;
an oversized body 413, a request that arrived on a loopback address naming another host 421
(:mod:`serve.limits`, in Serve's proxy), unknown routes 404. A real bug is still a 500, so that
it is seen rather than blamed on the client. Not JSON: malformed HTTP framing (a
``Content-Length`` that is not a number, such as ``abc`` or ``-1``) is refused by the HTTP server
itself (uvicorn), before any of this code runs, with a plain-text 400 ``Invalid HTTP request
received.``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Dict, List, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictStr,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ncf.data.schema import MAX_ID_CHARS
from ncf.moments import AT_FORMS, as_datetime, parse_at
from ncf.rank.ranker import MAX_K
from ncf.rank.recommender import BeforeTheData, PassBusy
from serve.limits import MAX_BODY_BYTES, STARTING_RETRY_AFTER_S, EdgeLimits, NoSniff

# -- limits (security defaults: small bodies, bounded work per request) -----------------------

MAX_BATCH_USERS = 100
# Each explained item is scored twice more, on its own copy of the household's purchases (about
# 1.5 ms each on one CPU core for Complete Journey): a batch of 100 households at k = 100 would
# be 20,000 of them, past the request timeout.
MAX_EXPLAINED_ITEMS = 1000
MAX_PRODUCT_IDS = 1000


def _check_at(value: Any) -> Optional[datetime]:
    """The moment of ``at`` by :func:`ncf.moments.parse_at`'s rule, whose range (1970 to 2**33 s,
    2242) keeps the temporal features' date arithmetic and pandas' timestamps from overflow and
    catches epoch milliseconds sent as seconds."""
    if value is None:
        return None
    return as_datetime(parse_at(value))


At = Annotated[
    Optional[datetime],
    PlainValidator(_check_at),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
                {"type": "number"},
                {"type": "null"},
            ],
            "description": f"the moment to rank for: {AT_FORMS}; default: the deployment's default_at "
            "(now, or the model's data end)",
            "examples": ["2017-11-27T04:01:21Z", "2017-11-27", 1511755281],
        }
    ),
]

# Raw ids may be integers or strings (the vocabulary compares them as strings). Integers within
# int64, what a log's integer column holds: unbounded, an id of 4,000 digits was accepted and
# echoed back, while one of 4,301 could not be decoded at all (a 400, Python's digit limit).
ID_FORMS = f"an id is an integer within int64 or a string of 1 to {MAX_ID_CHARS} characters"


def _check_raw_id(value):
    """One check, one message: a union of the two forms said each bad id twice, at locations
    named after pydantic's internal labels (``user_id.constrained-int``), which no client has."""
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value <= 2**63 - 1:
            return value
    elif isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): no text to look up
            raise PydanticCustomError("raw_id", "an id's text is UTF-8: a lone surrogate is not") from None
        return value
    raise PydanticCustomError("raw_id", ID_FORMS)


RawId = Annotated[
    Union[int, str],
    PlainValidator(_check_raw_id),
    WithJsonSchema(
        {
            "anyOf": [
                # int64 by its format: OpenAPI's maximum is a float, which writes 2**63 - 1 as 2**63.
                {"type": "integer", "format": "int64"},
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
            ],
            "description": ID_FORMS,
        }
    ),
]


class _Strict(BaseModel):
    """Unknown fields are refused, so a misspelt option is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class RankingOptions(_Strict):
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K, description="how many products")] = 10
    at: At = None
    exclude_purchased: Annotated[bool, Field(strict=True)] = False
    explain: Annotated[
        bool,
        Field(
            strict=True,
            description="add each product's reason (its purchase timing and its scores had the household never "
            "bought it or its category) and the past purchases the attention weighted most",
        ),
    ] = False


class RecommendRequest(RankingOptions):
    user_id: RawId


class BatchRecommendRequest(RankingOptions):
    user_ids: Annotated[List[RawId], Field(min_length=1, max_length=MAX_BATCH_USERS)]

    @model_validator(mode="after")
    def _explained_items_bounded(self) -> "BatchRecommendRequest":
        if self.explain and len(self.user_ids) * self.k > MAX_EXPLAINED_ITEMS:
            raise ValueError(
                f"explain is limited to {MAX_EXPLAINED_ITEMS} items a request (user_ids x k; asked "
                f"{len(self.user_ids)} x {self.k}): split the batch or lower k"
            )
        return self


class ScoreRequest(_Strict):
    user_id: RawId
    product_ids: Annotated[List[RawId], Field(min_length=1, max_length=MAX_PRODUCT_IDS)]
    at: At = None


class Because(BaseModel):
    product_id: Union[int, str]
    weight: float


class Reason(BaseModel):
    """Why a product ranks where it does (ncf.rank.reasons): what the score owes to the household's
    own purchases, measured by scoring it again without them."""

    days_bought: int = Field(description="distinct days the household bought the product before at")
    days_since_last: Optional[float] = Field(None, description="days since its last purchase; absent when never bought")
    typical_gap_days: Optional[float] = Field(
        None, description="mean days between its purchase days; absent when bought on fewer than 2 days"
    )
    score_if_never_bought: float = Field(description="the model's score had the household never bought it")
    score_if_category_never_bought: float = Field(
        description="the model's score had the household never bought anything in its category"
    )


class Item(BaseModel):
    product_id: Union[int, str]
    score: float
    reason: Optional[Reason] = Field(None, description="with explain, for a household that is no cold start")
    because: Optional[List[Because]] = None


class Recommendation(BaseModel):
    user_id: Union[int, str]
    cold_start: bool = Field(
        description="true when the household has no purchases before at (or is not in the data): popular "
        "products at that hour, scored with the model's row for unknown households"
    )
    items: List[Item]


class RecommendResponse(Recommendation):
    at: datetime
    model_version: str


class BatchRecommendResponse(BaseModel):
    results: List[Recommendation]
    at: datetime
    model_version: str


class ScoreResponse(BaseModel):
    user_id: Union[int, str]
    cold_start: bool = Field(
        description="true when the served data does not know the household or it has no purchases before at: "
        "the scores come from the model's row for unknown households, without purchase features"
    )
    scores: List[float]
    at: datetime
    model_version: str


class Health(BaseModel):
    status: str
    model_version: str = Field(description="the version of the model answering (config.json's version)")
    data_end: Optional[datetime] = Field(
        None,
        description="the last purchase the histories hold: requests at now rank from purchases up to it, "
        "so an old one means stale histories (deploy newer DATA with --data)",
    )
    rollout_error: Optional[str] = Field(
        None,
        description="why the last rollout failed, while the model of model_version keeps serving; "
        "null when the model asked for is the one serving",
    )
    replica: Optional[str] = Field(
        None, description="the replica answering (Serve's replica tag): a rollout is checked on every one"
    )


# A 4 KB /score body of 1,000 empty lists is 2,000 problems (two per id: int or string): each
# listed, the answer was 332 KB, and 10-15 ms of the replica's event loop went to writing it.
MAX_ERRORS_LISTED = 20
# The rest are in unknown_product_ids: 1,000 ids twice in one answer said nothing more.
MAX_IDS_NAMED = 10


class ErrorBody(BaseModel):
    """Every error answer (4xx and 5xx) is this JSON object."""

    error: str = Field(description="what is wrong, in one line")
    detail: Optional[List[Dict[str, Any]]] = Field(
        None,
        description=f"422 on a request's shape: each field's problem, the first {MAX_ERRORS_LISTED}; where there "
        'are more, a last entry {"loc": [], "msg": "... and N more", "type": "more_errors"}',
    )
    unknown_product_ids: Optional[List[Union[int, str]]] = Field(
        None,
        description="422 from /score and /products: every product id the model does not know (error names "
        f"how many and the first {MAX_IDS_NAMED})",
    )


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (
            400,
            "the request body could not be decoded at all (not UTF-8, UTF-16 or UTF-32 text, JSON nested "
            'too deeply, or an integer of more than 4,300 digits: "There was an error parsing the body"). '
            "Malformed HTTP framing (a Content-Length that is not a number) is refused by the HTTP server "
            'itself with a plain-text 400, "Invalid HTTP request received.", not this body',
        ),
        (408, "the request body did not arrive within the body deadline"),
        (413, f"the request body is larger than {MAX_BODY_BYTES} bytes (a long list of long ids can be)"),
        (
            421,
            "a request that arrived on a loopback address names a Host other than an address, localhost, "
            "this machine's name or a name in NCF_SERVE_HOSTS (DNS rebinding)",
        ),
        (
            422,
            "the request does not fit the schema, names unknown product ids, or asks for an at before "
            "the end of the data's first day",
        ),
        (
            503,
            "no model loaded yet, no replica running, the replicas' queues are full, or a past day's products' "
            "stats are being computed (that day's for longer than the request waits, or another's), or the "
            "replica's share of time for such passes is spent (Retry-After)",
        ),
        (504, "the answer took longer than the request timeout"),
    )
}


class UnknownProducts(ValueError):
    """Product ids outside the model's catalog (a client error: 422 naming them)."""

    def __init__(self, product_ids: List) -> None:
        product_ids = list(dict.fromkeys(product_ids))  # each once, in the order asked
        named = product_ids[:MAX_IDS_NAMED]
        first = f", the first {len(named)}" if len(named) < len(product_ids) else ""
        plural = "s" if len(product_ids) != 1 else ""
        super().__init__(f"{len(product_ids)} unknown product id{plural}{first}: {named}")
        self.product_ids = product_ids


class NotReady(RuntimeError):
    """No model loaded yet (503, so load balancers and tests wait)."""


# -- looking at a household: its baskets, product labels, id search (the explorer page's routes) --

MAX_BASKETS = 50
MAX_SEARCH_RESULTS = 50


class HistoryRequest(_Strict):
    user_id: RawId
    at: At = None
    baskets: Annotated[
        int, Field(strict=True, ge=1, le=MAX_BASKETS, description="how many of the latest baskets before at")
    ] = 5


class Product(BaseModel):
    product_id: Union[int, str]
    department: Optional[str] = Field(description="the catalog's department (None when it has none)")
    category: Optional[str] = Field(description="the catalog's category (None when it has none)")


class BasketItem(Product):
    lines: int = Field(description="purchase lines of the product in the basket")


class Basket(BaseModel):
    at: datetime = Field(description="when it was bought (a basket is the purchases of one moment)")
    products: List[BasketItem] = Field(description="the distinct products bought at that moment")


class HistoryResponse(BaseModel):
    user_id: Union[int, str]
    known: bool = Field(description="false for households the data does not have (their rankings are cold starts)")
    purchases: int = Field(description="purchase lines before at")
    baskets: List[Basket] = Field(description="the latest baskets before at, most recent first")
    at: datetime
    model_version: str


class ProductsRequest(_Strict):
    product_ids: Annotated[List[RawId], Field(min_length=1, max_length=MAX_PRODUCT_IDS)]


class ProductsResponse(BaseModel):
    products: List[Product] = Field(description="in request order")
    model_version: str


class HouseholdSearchRequest(_Strict):
    prefix: Annotated[StrictStr, Field(max_length=MAX_ID_CHARS, description="start of the ids ('' lists the first)")]
    limit: Annotated[int, Field(strict=True, ge=1, le=MAX_SEARCH_RESULTS)] = 10


class HouseholdSearchResponse(BaseModel):
    user_ids: List[Union[int, str]] = Field(description="household ids starting with prefix, in string order")
    model_version: str


# -- errors --------------------------------------------------------------------------------


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


def describe_errors(errors) -> str:
    """Pydantic errors -> one line: ``body.k: Input should be less than or equal to 100; ...``."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    listed = errors[:MAX_ERRORS_LISTED]
    # Only loc/msg/type: the raw errors can hold exception objects that JSON cannot encode.
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in listed]
    message = describe_errors(listed)
    if len(errors) > len(listed):
        more = f"... and {len(errors) - len(listed)} more"
        message = f"{message}; {more}"
        detail.append({"loc": [], "msg": more, "type": "more_errors"})
    return _error(422, message, detail=detail)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    response = _error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # 405's Allow, for one
    return response


async def _on_unknown_products(request: Request, exc: UnknownProducts) -> JSONResponse:
    return _error(422, str(exc), unknown_product_ids=exc.product_ids)


async def _on_before_the_data(request: Request, exc: BeforeTheData) -> JSONResponse:
    return _error(422, str(exc))


async def _on_not_ready(request: Request, exc: NotReady) -> JSONResponse:
    response = _error(503, str(exc))
    response.headers["Retry-After"] = str(STARTING_RETRY_AFTER_S)
    return response


# A past day's pass takes seconds on Complete Journey and minutes at a billion purchases.
PASS_RETRY_AFTER_S = 10


async def _on_pass_busy(request: Request, exc: PassBusy) -> JSONResponse:
    response = _error(503, str(exc))
    wait = PASS_RETRY_AFTER_S if exc.retry_after_s is None else math.ceil(exc.retry_after_s)
    response.headers["Retry-After"] = str(wait)
    return response


def create_app() -> FastAPI:
    """The FastAPI application, with the error handlers and the body size limit."""
    app = FastAPI(
        title="AdvancedNCF recommendations",
        description="Top-K products for users at a moment, batch ranking and scoring, from one "
        f'model directory. Errors are JSON {{"error": message}} (ErrorBody). Request bodies are limited '
        f"to {MAX_BODY_BYTES} bytes (413).",
        version="1",
        responses=ERROR_RESPONSES,
        # FastAPI's /docs and /redoc pages load Swagger UI and fonts from CDNs: a request off the
        # machine, and a blank page where there is none to reach. The schema is /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(UnknownProducts, _on_unknown_products)
    app.add_exception_handler(BeforeTheData, _on_before_the_data)
    app.add_exception_handler(NotReady, _on_not_ready)
    app.add_exception_handler(PassBusy, _on_pass_busy)
    # The same limits as Serve's proxy applies (serve.limits), cheap on a body the proxy already
    # read. Without the proxy hook the body size and the body deadline hold here (Serve 2.60's
    # proxy streams the body to the replica as it comes), not the control headers (the proxy acts
    # on them first), and Serve's and a bug's plain-text errors stay plain text.
    app.add_middleware(EdgeLimits, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(NoSniff)  # outermost: EdgeLimits' own refusals carry it too
    return app

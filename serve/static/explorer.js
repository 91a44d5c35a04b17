// The explorer page: a household, a moment and k -> its recent baskets and its top k with the
// "because you bought" reasons, from the Serve app's JSON routes. No framework, no build step.
// Everything from the server is written with textContent (never innerHTML), so ids and labels
// cannot inject markup.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let config = null;
  // The question asked last: an earlier one's answer, arriving after it, is not shown.
  let questionSeq = 0;
  // Aborts the calls of the question asked last when another replaces it: its retries and the
  // calls after it are not sent (a ranking a replica has already begun runs to its end).
  let questionCalls = null;

  // -- HTTP ------------------------------------------------------------------------------------

  // The question's calls (recommend, history) and the settings ask again after a 503's
  // Retry-After (a replica computing a past day's stats, shedding load, or loading its model) of
  // at most a minute, this many times; the id search does not.
  const BUSY_RETRIES = 2;
  // Serve's request_timeout_s (30 s where serve.launch starts it) normally answers first with a
  // 504; without it (`serve run serve.app:build_app` sets none) a stalled replica left the page
  // loading for ever.
  const ANSWER_TIMEOUT_S = 45;

  // Integer ids of 2^53 and more lose digits as JavaScript numbers: they are kept as the digits
  // the server wrote (JSON.parse's source text access, Chromium 114+), and go back as strings,
  // which the API takes for integer ids.
  function keepLargeIntegers(key, value, context) {
    if (Number.isInteger(value) && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
      return context.source;
    }
    return value;
  }

  // A question's calls stop asking again once another question replaced it (`current` false) or
  // its calls were aborted: its busy line would stand under the new answer (or its error), and its
  // calls load a busy server.
  async function call(path, body, retries = 0, current = () => true, signal = undefined) {
    const live = () => current() && !(signal && signal.aborted);
    // A fetch that gets no answer at all (server down, connection cut) says only "Failed to
    // fetch": which call, and that nothing answered, is what tells a reader where to look. An
    // abort by the caller stays an abort, which the callers know to ignore; one by the clock
    // (each try's own, its body read included) is said as a call that got no answer in time.
    const send = async () => {
      const attempt = new AbortController();
      const stop = () => attempt.abort();
      if (signal) signal.addEventListener("abort", stop);
      if (signal && signal.aborted) attempt.abort();
      let late = false;
      const timer = setTimeout(() => { late = true; attempt.abort(); }, ANSWER_TIMEOUT_S * 1000);
      // Relative paths: the routes sit beside /ui under the app's route prefix.
      const init = body === undefined ? { signal: attempt.signal } : {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: attempt.signal,
      };
      try {
        const response = await fetch(path, init);
        return { response, text: await response.text() };
      } catch (e) {
        if (late) throw new Error(`${path}: no answer within ${ANSWER_TIMEOUT_S} s`);
        if (e.name === "AbortError") throw e;
        throw new Error(`${path}: no answer from the server (${e.message})`);
      } finally {
        clearTimeout(timer);
        if (signal) signal.removeEventListener("abort", stop);
      }
    };
    let { response, text } = await send();
    for (let retry = 0; retry < retries && response.status === 503 && live(); retry++) {
      const wait = Number(response.headers.get("Retry-After"));
      if (!(wait > 0 && wait <= 60)) break;
      setStatus(`The server is busy (HTTP 503); asking again in ${wait} s…`, false);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      if (!live()) break;
      ({ response, text } = await send());
    }
    let data = null;
    let readable = true;
    try {
      data = JSON.parse(text, keepLargeIntegers);
    } catch (e) {
      readable = false;
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${path}: HTTP ${response.status}`);
      error.body = data;
      throw error;
    }
    // A 2xx that is not JSON (a proxy's page, a body cut short): said as such, not left to fail as
    // "Cannot read properties of null" in whichever caller reads it first.
    if (!readable) throw new Error(`${path}: unreadable answer (HTTP ${response.status})`);
    return data;
  }

  // -- small helpers ----------------------------------------------------------------------------

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // A datetime-local value -> ISO-8601 UTC; browsers drop ":00" seconds.
  function toIso(value) {
    if (!value) return null;
    return (value.length === 16 ? `${value}:00` : value) + "Z";
  }

  function shownMoment(iso) {
    return `${String(iso).slice(0, 19).replace("T", " ")} UTC`;
  }

  // "category · department" of a product answer (from /history or /products)
  function labelText(product) {
    if (!product) return "";
    return [product.category, product.department].filter((x) => x).join(" · ");
  }

  function labelOf(labels, productId) {
    return labelText(labels.get(String(productId)));
  }

  // Errors interrupt a screen reader (assertive); progress and answers wait their turn (polite).
  // Set before the text, which is what gets announced.
  function setStatus(text, isError) {
    $("status").setAttribute("aria-live", isError ? "assertive" : "polite");
    $("status").textContent = text;
    $("status").className = isError ? "error" : "muted";
  }

  // While a question loads, its results (the previous answer, dimmed) are not yet its own.
  function setResultsState(state) {
    $("results").dataset.state = state;
    if (state === "loading") $("results").setAttribute("aria-busy", "true");
    else $("results").removeAttribute("aria-busy");
  }

  // The API's limit counts characters (code points), the field's maxlength UTF-16 units: the
  // API's count decides what it refuses.
  function maxIdChars() {
    return Number($("household").dataset.maxChars);
  }

  function idTooLong(household) {
    return [...household].length > maxIdChars();
  }

  // -- household search (the datalist under the id field) ---------------------------------------

  let searchTimer = null;
  let searchSeq = 0;

  function searchHouseholds() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(async () => {
      const seq = ++searchSeq;
      try {
        const found = await call("households", { prefix: $("household").value.trim(), limit: 20 });
        if (seq !== searchSeq) return; // a newer search is on its way
        $("household-ids").replaceChildren(
          ...found.user_ids.map((id) => {
            const option = element("option");
            option.value = String(id);
            return option;
          }),
        );
        $("search-note").textContent = "";
      } catch (e) {
        if (seq !== searchSeq || e.name === "AbortError") return;
        // Suggestions are a convenience: a failed search leaves the field as it is, but says so,
        // under it; no suggestions alone reads as "no such ids" when the server is down.
        $("search-note").textContent = `No id suggestions: ${e.message}`;
      }
    }, 200);
  }

  // -- rendering -------------------------------------------------------------------------------

  function renderHistory(history) {
    const summary = history.known
      ? `${history.purchases} purchase lines before ${shownMoment(history.at)}; the latest ${history.baskets.length} baskets:`
      : "The data does not know this household: no purchases.";
    $("history-summary").textContent = history.known && history.baskets.length === 0
      ? `No purchases before ${shownMoment(history.at)}.`
      : summary;
    $("baskets-list").replaceChildren(
      ...history.baskets.map((basket) => {
        const item = element("li", null, "basket");
        item.append(element("h3", `${shownMoment(basket.at)} · ${basket.products.length} products`));
        const products = element("ul");
        for (const product of basket.products) {
          const line = element("li");
          line.dataset.productId = String(product.product_id);
          line.append(element("span", product.product_id, "product-id"));
          line.append(element("span", labelText(product), "labels"));
          if (product.lines > 1) line.append(element("span", `×${product.lines}`, "labels"));
          products.append(line);
        }
        item.append(products);
        return item;
      }),
    );
  }

  function renderRecommendations(answer, labels) {
    $("k-shown").textContent = String(answer.items.length);
    $("at-shown").textContent = shownMoment(answer.at);
    $("cold-start").hidden = !answer.cold_start;
    $("recommendations").replaceChildren(
      ...answer.items.map((item) => {
        const line = element("li", null, "item");
        line.dataset.productId = String(item.product_id);
        line.append(element("span", item.product_id, "product-id"));
        line.append(element("span", labelOf(labels, item.product_id), "labels"));
        line.append(element("span", `score ${Number(item.score).toFixed(4)}`, "score"));
        if (item.reason) line.append(element("div", reasonText(item.reason), "reason"));
        if (item.because && item.because.length) {
          const reasons = item.because
            .map((b) => {
              const label = labelOf(labels, b.product_id);
              return `${b.product_id}${label ? ` (${label})` : ""} ${Number(b.weight).toFixed(2)}`;
            })
            .join(", ");
          line.append(element("div", `because you bought ${reasons}`, "because"));
        }
        return line;
      }),
    );
  }

  // What the score owes to the household's own purchases (the API's `reason`).
  function reasonText(reason) {
    const days = (d) => `${Number(d).toFixed(d < 10 ? 1 : 0)} days`;
    const habit = reason.days_bought
      ? `bought on ${reason.days_bought} day${reason.days_bought > 1 ? "s" : ""}, last ${days(reason.days_since_last)} ago` +
        (reason.typical_gap_days != null ? `, every ${days(reason.typical_gap_days)} on average` : "") +
        `; score ${Number(reason.score_if_never_bought).toFixed(3)} had it never been bought`
      : "never bought";
    return `${habit}; ${Number(reason.score_if_category_never_bought).toFixed(3)} had nothing in its category been bought`;
  }

  // The API's limits on a /products call: ids per call (MAX_PRODUCT_IDS) and, below the edge's
  // 64 KiB body limit, the bytes of their JSON (long text ids fill it before 1,000 do).
  const MAX_LABEL_IDS = 1000;
  const MAX_LABEL_BODY_BYTES = 48 * 1024;

  function labelChunks(ids) {
    const encoder = new TextEncoder();
    const chunks = [];
    let chunk = [];
    let bytes = 0;
    for (const id of ids) {
      const size = encoder.encode(JSON.stringify(id)).length + 1;
      if (chunk.length && (chunk.length >= MAX_LABEL_IDS || bytes + size > MAX_LABEL_BODY_BYTES)) {
        chunks.push(chunk);
        chunk = [];
        bytes = 0;
      }
      chunk.push(id);
      bytes += size;
    }
    if (chunk.length) chunks.push(chunk);
    return chunks;
  }

  // Product labels for every id shown, in calls that fit the API's limits: {labels, failed}, where
  // failed is the error's text when a call failed (its ids then show without labels, and the
  // status says so). Ids the state no longer knows (a rollout between the ranking and this call)
  // are asked without, once: a second rollout meanwhile leaves the rest unlabelled, said too.
  async function labelsFor(ids, current, signal) {
    const labels = new Map();
    let failed = null;
    for (let unique of labelChunks([...new Set(ids.map(String))])) {
      // A replaced question's labels are never shown; an aborted one's calls would only fail.
      if (!current() || (signal && signal.aborted)) break;
      let labelled = false;
      for (let attempt = 0; attempt < 2 && unique.length; attempt++) {
        try {
          const found = await call("products", { product_ids: unique }, BUSY_RETRIES, current, signal);
          for (const product of found.products) labels.set(String(product.product_id), product);
          labelled = true;
          break;
        } catch (e) {
          const unknown = new Set(((e.body && e.body.unknown_product_ids) || []).map(String));
          if (!unknown.size) {
            failed = e.message;
            break;
          }
          unique = unique.filter((id) => !unknown.has(id));
        }
      }
      // Both attempts named unknown ids: the ids left would otherwise show bare, unexplained.
      if (!labelled && unique.length && failed === null) failed = "ids changed during the call";
    }
    return { labels, failed };
  }

  // -- the question ----------------------------------------------------------------------------

  async function show(event) {
    if (event) event.preventDefault();
    const household = $("household").value.trim();
    // A new question, even a blank one, replaces the one loading: its answer is not shown.
    const seq = ++questionSeq;
    const current = () => seq === questionSeq;
    if (questionCalls) questionCalls.abort();
    const refusal = !household
      ? "Type a household id"
      : idTooLong(household) ? `Household ids have at most ${maxIdChars()} characters` : null;
    if (refusal !== null) {
      questionCalls = null;
      // As for a refused question: no results (an aborted one's, still dimmed) under its error.
      $("results").hidden = true;
      setResultsState("error");
      setStatus(refusal, true);
      return;
    }
    questionCalls = new AbortController();
    const signal = questionCalls.signal;
    const k = Number($("k").value);
    const baskets = Number($("baskets").value);
    // The field as asked: it may change while the answer comes, and the address names this one.
    const atField = $("at").value;
    const at = toIso(atField);
    const moment = at === null ? {} : { at };
    // Show stays enabled: a question asked meanwhile replaces this one (questionSeq).
    setResultsState("loading");
    setStatus(`Loading household ${household}…`, false);
    try {
      const answer = await call(
        "recommend", { user_id: household, k, explain: true, ...moment }, BUSY_RETRIES, current, signal,
      );
      if (!current()) return;
      const ids = [
        ...answer.items.map((i) => i.product_id),
        ...answer.items.flatMap((i) => (i.because || []).map((b) => b.product_id)),
      ];
      // The baskets before the moment the ranking used: without an `at` each call would take its
      // own "now".
      const [history, { labels, failed }] = await Promise.all([
        call("history", { user_id: household, baskets, at: answer.at }, BUSY_RETRIES, current, signal),
        labelsFor(ids, current, signal),
      ]);
      if (!current()) return;
      renderHistory(history);
      renderRecommendations(answer, labels);
      $("results").hidden = false;
      $("results").dataset.userId = household;
      $("results").dataset.at = answer.at;
      setResultsState("ready");
      $("model-version").textContent = answer.model_version; // a rollout since the page loaded
      const unlabelled = failed === null ? "" : ` (product labels unavailable: ${failed})`;
      setStatus(`Household ${household} · model ${answer.model_version}${unlabelled}`, false);
      const params = new URLSearchParams({ household, k: String(k), baskets: String(baskets) });
      if (at !== null) params.set("at", atField);
      rememberQuestion(params);
    } catch (e) {
      if (!current()) return;
      // A call that failed inside Promise.all leaves the other running: the label calls would go
      // on (and wait out 503s) for an answer never shown.
      questionCalls.abort();
      // Another household's (or moment's) results must not stay under this question's error.
      $("results").hidden = true;
      setResultsState("error");
      setStatus(e.message, true);
    }
  }

  // The question in the address bar, so that a view can be shared or reloaded.
  function rememberQuestion(params) {
    window.history.replaceState(null, "", `${window.location.pathname}?${params}`);
  }

  // Empty: each question is ranked for the deployment's default moment when it is asked (now moves
  // on; a moment pinned at page load would go stale, and fall inside DATA after a refresh).
  function resetMoment() {
    $("at").value = "";
  }

  // The page's files' version, as the replica that sent this script wrote it (serve/ui.py).
  const ASSETS_VERSION = "__ASSETS_VERSION__";

  // The page and this script from replicas of two versions (a rollout under way): the page is
  // loaded again once, for both to come from one; a second mismatch is said, the page left idle
  // (its fields and this script may not fit each other).
  function sameVersionAsThePage() {
    const page = document.querySelector('meta[name="ncf-assets"]');
    if (!page || page.content === ASSETS_VERSION) return true;
    const key = `ncf-explorer-reloaded:${page.content}:${ASSETS_VERSION}`;
    let reloaded = true;
    try {
      const seen = sessionStorage.getItem(key) !== null;
      sessionStorage.setItem(key, "1");
      reloaded = seen;
    } catch (e) {
      // No storage, or none to write (a private window's policy, a full quota): no reload, whose
      // count could not be kept.
    }
    if (!reloaded) {
      window.location.reload();
      return false;
    }
    setStatus(
      "The page and its script come from two versions of the server (a rollout under way?): load the page again in a minute",
      true,
    );
    return false;
  }

  async function start() {
    if (!sameVersionAsThePage()) return;
    $("query").addEventListener("submit", show);
    $("household").addEventListener("input", searchHouseholds);
    $("default-at").addEventListener("click", resetMoment);
    let settingsError = null;
    setStatus("Reading the page's settings…", false);  // a slow server's first call is not a dead page
    try {
      config = await call("ui/config", undefined, BUSY_RETRIES);
      $("model-version").textContent = config.model_version;
      $("k").max = String(config.max_k);
      $("baskets").max = String(config.max_baskets);
      $("at-hint").textContent = `empty: the default, ${shownMoment(config.default_at)} at load`;
      resetMoment();
      // A busy line from asking again for the settings is over; the address's question, if any,
      // writes its own.
      setStatus("", false);
      document.body.dataset.ready = "true";
    } catch (e) {
      settingsError = e.message;
    }
    // Disabled in the page until then: the address's question comes first. Without the settings,
    // questions can still be asked, within the fields' own limits.
    $("show").disabled = false;
    const params = new URLSearchParams(window.location.search);
    for (const name of ["household", "k", "baskets", "at"]) {
      if (params.get(name)) $(name).value = params.get(name);
    }
    if (settingsError !== null) {
      // The address's question stays in the fields, to be asked once the server answers.
      setStatus(`The page could not read its settings: ${settingsError}`, true);
      return;
    }
    // The id field holds typing only: an address's id longer than the API takes would
    // be refused with the API's field-by-field message.
    if (idTooLong($("household").value.trim())) {
      const most = maxIdChars();
      setStatus(`The address's household is too long: household ids have at most ${most} characters`, true);
      return;
    }
    searchHouseholds();
    // A field drops a value it cannot hold (an `at` without its time) and keeps one outside its
    // limits (k=500, baskets=2.5) but marks it invalid: asking would answer another question than
    // the address names, or one the API refuses.
    const dropped = ["k", "baskets", "at"].filter(
      (name) => params.get(name) && ($(name).value === "" || !$(name).checkValidity()),
    );
    if (dropped.length) {
      const values = dropped.map((name) => `${name}=${params.get(name)}`).join(", ");
      setStatus(`The address's ${values} is not a value this page takes (at: YYYY-MM-DDTHH:MM, UTC)`, true);
      return;
    }
    if (params.get("household")) show();
  }

  start();
})();

"""WebShop: buy the product an instruction asks for, with ``search[...]`` / ``click[...]``.

Two backends behind one protocol, chosen by ``make("webshop", backend=...)``:

* ``"real"``: the WebShop repository's text environment (``web_agent_site``, with its
  product data and spaCy model), when it is installed. Goals ``0-499`` are the test
  split, ``500-1499`` dev, the rest train (WebShop's own convention). No expert actions.
* ``"offline"``: a bundled catalog of 100 products in 20 product types and 100
  instructions (``data/webshop_catalog.json``), with WebShop's page flow (search ->
  results, 10 per page -> item page with options -> Buy Now) and WebShop's reward, and a
  gold action sequence per instruction.
* ``"auto"`` (default): real when ``web_agent_site`` imports, offline otherwise.

Reward (given once, on ``click[buy now]``, which ends the episode), as WebShop's
``get_reward``::

    r = r_type * (n_attributes_matched + n_options_matched + [price <= price_upper])
              / (n_goal_attributes + n_goal_options + 1)

where ``r_type`` is 1 when the purchased product's query or category matches the goal's
or its title shares > 20 % of the goal's product-type words, 0.5 when none of these holds,
0.1 below 10 % title overlap and 0 with none. The offline backend replaces WebShop's
fuzzy string matching and spaCy noun parsing with exact word-set matching (an attribute
or option matches when it is in the product's attribute/option lists, title, bullet
points or description). ``info["success"]`` is ``reward == 1``; ``info["score"]`` the
reward. Invalid actions leave the page unchanged and say so.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache

from .base import Observation, TextEnv, check_split

CATALOG = os.path.join(os.path.dirname(__file__), "data", "webshop_catalog.json")
RESULTS_PER_PAGE = 10
MAX_RESULTS = 50
_ACTION = re.compile(r"^(search|click)\[(.*)\]$", re.IGNORECASE | re.DOTALL)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9.'/-]+", text.lower())


@lru_cache(maxsize=1)
def load_catalog() -> tuple[list[dict], list[dict]]:
    """The bundled (products, goals)."""
    with open(CATALOG) as f:
        data = json.load(f)
    return data["products"], data["goals"]


def offline_split(index: int) -> str:
    """Split of offline goal ``index``: 1 in 5 test, 1 in 5 dev, the rest train."""
    return {0: "test", 1: "dev"}.get(index % 5, "train")


def _contains(product: dict, phrase: str) -> bool:
    text = " ".join([product["title"], *product["bullet_points"], product["description"]]).lower()
    return phrase.lower() in text


def type_reward(product: dict, goal: dict) -> float:
    """WebShop's r_type (see module docstring)."""
    query_match = product["query"] == goal["query"]
    category_match = len({c.strip() for c in product["product_category"].split("›")}
                         & {c.strip() for c in goal["product_category"].split("›")}) >= 2
    wanted = set(_words(goal["name"]))
    have = set(_words(product["name"])) | set(_words(product["title"]))
    title_score = len(wanted & have) / len(wanted) if wanted else 0.2
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type


def reward(product: dict, goal: dict, options: dict[str, str]) -> float:
    """WebShop's purchase reward for buying ``product`` with ``options`` under ``goal``."""
    attrs = {a.lower() for a in product["attributes"]}
    n_attr = sum(1 for a in goal["attributes"] if a.lower() in attrs or _contains(product, a))
    goal_values = {v.lower() for v in goal["goal_options"].values()}
    n_opt = sum(1 for v in options.values() if v.lower() in goal_values or _contains(product, v))
    r_price = 1.0 if product["price"] <= goal["price_upper"] else 0.0
    total = (n_attr + n_opt + r_price) / (len(goal["attributes"]) + len(goal["goal_options"]) + 1)
    return total * type_reward(product, goal)


class _Search:
    """TF-IDF ranking of products for a free-text query (the offline search engine)."""

    def __init__(self, products: list[dict]):
        self.products = products
        self.docs = [_words(" ".join([p["title"], p["name"], p["query"], *p["attributes"]]))
                     for p in products]
        df: dict[str, int] = {}
        for doc in self.docs:
            for w in set(doc):
                df[w] = df.get(w, 0) + 1
        self.idf = {w: math.log(1 + len(products) / n) for w, n in df.items()}

    def __call__(self, query: str) -> list[dict]:
        terms = set(_words(query))
        scored = []
        for product, doc in zip(self.products, self.docs, strict=True):
            words = set(doc)
            score = sum(self.idf[t] for t in terms if t in words)
            if score > 0:
                scored.append((-score, product["asin"], product))
        return [p for _, _, p in sorted(scored, key=lambda s: s[:2])][:MAX_RESULTS]


class OfflineWebShopEnv(TextEnv):
    """The bundled-catalog WebShop (see module docstring). Task handles: ``"goal/<index>"``."""

    name = "webshop"

    def __init__(self, max_steps: int = 15):
        super().__init__(max_steps)
        self.products, self.goals = load_catalog()
        self.by_asin = {p["asin"].lower(): p for p in self.products}
        self.search = _Search(self.products)

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        return [f"goal/{i}" for i in range(len(self.goals)) if offline_split(i) == split]

    def _goal(self, task: str) -> dict:
        kind, _, idx = task.partition("/")
        if kind != "goal" or not idx.isdigit() or int(idx) >= len(self.goals):
            raise ValueError(f"task must be 'goal/<index>' with index < {len(self.goals)}, got {task!r}")
        return self.goals[int(idx)]

    # -- pages --------------------------------------------------------------------
    def _page(self) -> tuple[str, list[str]]:
        head = f"Instruction: [SEP] {self.goal['instruction']}"
        if self.page == "search":
            return f"WebShop [SEP] {head} [SEP] Search", ["search[<your query>]"]
        if self.page == "results":
            start = self.result_page * RESULTS_PER_PAGE
            shown = self.results[start: start + RESULTS_PER_PAGE]
            parts = [head, "Back to Search",
                     f"Page {self.result_page + 1} (Total results: {len(self.results)})"]
            clicks = ["click[back to search]"]
            if self.result_page > 0:
                parts.append("< Prev")
                clicks.append("click[< prev]")
            if start + RESULTS_PER_PAGE < len(self.results):
                parts.append("Next >")
                clicks.append("click[next >]")
            for p in shown:
                parts += [p["asin"], p["title"], f"${p['price']:.2f}"]
                clicks.append(f"click[{p['asin'].lower()}]")
            return " [SEP] ".join(parts), clicks
        product = self.product
        if self.page == "item":
            parts = [head, "Back to Search", "< Prev"]
            clicks = ["click[back to search]", "click[< prev]"]
            for name, values in product["options"].items():
                parts.append(name)
                for v in values:
                    parts.append(f"{v} (selected)" if self.options.get(name) == v else v)
                    clicks.append(f"click[{v}]")
            parts += [product["title"], f"Price: ${product['price']:.2f}", "Rating: N.A.",
                      "Description", "Features", "Buy Now"]
            clicks += ["click[description]", "click[features]", "click[buy now]"]
            return " [SEP] ".join(parts), clicks
        body = product["description"] if self.page == "description" else " [SEP] ".join(
            product["bullet_points"])
        return " [SEP] ".join([head, "Back to Search", "< Prev", body]), [
            "click[back to search]", "click[< prev]"]

    def _observation(self, prefix: str = "") -> Observation:
        text, actions = self._page()
        return Observation(prefix + text, actions, self.goal["instruction"])

    def _reset(self, task: str) -> Observation:
        self.goal = self._goal(task)
        self.page, self.results, self.result_page = "search", [], 0
        self.product, self.options = None, {}
        return self._observation()

    def _step(self, action: str):
        info = {"success": False, "score": 0.0}
        match = _ACTION.match(action)
        kind, arg = (match.group(1).lower(), match.group(2).strip()) if match else ("", "")
        _, clicks = self._page()
        if kind == "search" and self.page == "search" and arg:
            self.results, self.result_page, self.page = self.search(arg), 0, "results"
        elif kind == "click" and f"click[{arg.lower()}]" in [c.lower() for c in clicks]:
            done = self._click(arg.lower())
            if done:
                r = reward(self.product, self.goal, self.options)
                info.update(success=r >= 1.0 - 1e-9, score=r, purchased=self.product["asin"],
                            options=dict(self.options))
                return Observation(f"Thank you for shopping with us! [SEP] Your score (min 0.0, "
                                   f"max 1.0) [SEP] {r:.2f}", [], self.goal["instruction"]), r, True, info
        else:
            info["invalid"] = True
            return self._observation(f"Invalid action: {action!r}. [SEP] "), 0.0, False, info
        return self._observation(), 0.0, False, info

    def _click(self, arg: str) -> bool:
        """Apply a click that is valid on the current page; True when it is Buy Now."""
        if arg == "back to search":
            self.page, self.product, self.options = "search", None, {}
        elif self.page == "results":
            if arg == "next >":
                self.result_page += 1
            elif arg == "< prev":
                self.result_page -= 1
            else:
                self.product, self.options, self.page = self.by_asin[arg], {}, "item"
        elif self.page == "item":
            if arg == "< prev":
                self.page, self.product, self.options = "results", None, {}
            elif arg in ("description", "features"):
                self.page = arg
            elif arg == "buy now":
                return True
            else:
                for name, values in self.product["options"].items():
                    hit = [v for v in values if v.lower() == arg]
                    if hit:
                        self.options[name] = hit[0]
                        break
        else:   # description / features sub-page: "< prev" returns to the item
            self.page = "item"
        return False

    def _expert_actions(self, task: str) -> list[str]:
        goal = self._goal(task)
        actions = [f"search[{goal['search']}]", f"click[{goal['asin'].lower()}]"]
        actions += [f"click[{v}]" for v in goal["goal_options"].values()]
        return actions + ["click[buy now]"]


class RealWebShopEnv(TextEnv):
    """WebShop's own text environment (``web_agent_site.envs.WebAgentTextEnv``).

    Needs the WebShop repository installed with its data; this adapter maps its
    ``reset(session=...)`` / ``step`` / ``get_available_actions`` to the protocol.
    Task handles: ``"goal/<index>"`` into WebShop's goal list.
    """

    name = "webshop"

    def __init__(self, max_steps: int = 15, num_products: int | None = None,
                 num_goals: int | None = None):
        super().__init__(max_steps)
        from web_agent_site.envs import WebAgentTextEnv

        self._env = WebAgentTextEnv(observation_mode="text", num_products=num_products,
                                    human_goals=True)
        n = len(self._env.server.goals)
        self.num_goals = n if num_goals is None else min(n, num_goals)

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        bounds = {"test": (0, 500), "dev": (500, 1500), "train": (1500, self.num_goals)}[split]
        return [f"goal/{i}" for i in range(bounds[0], min(bounds[1], self.num_goals))]

    def _actions(self) -> list[str]:
        available = self._env.get_available_actions()
        out = ["search[<your query>]"] if available["has_search_bar"] else []
        return out + [f"click[{c}]" for c in available["clickables"]]

    def _reset(self, task: str) -> Observation:
        kind, _, idx = task.partition("/")
        if kind != "goal" or not idx.isdigit():
            raise ValueError(f"task must be 'goal/<index>', got {task!r}")
        obs, _ = self._env.reset(session=int(idx))
        return Observation(obs, self._actions(), self._env.instruction_text)

    def _step(self, action: str):
        obs, r, done, _ = self._env.step(action)
        r = float(r or 0.0)
        info = {"success": bool(done) and r >= 1.0 - 1e-9, "score": r}
        return Observation(obs, self._actions(), self.task_description), r, bool(done), info

    def _close(self) -> None:
        self._env.close()


def make_webshop(backend: str = "auto", **options) -> TextEnv:
    """``backend``: "auto" (real if ``web_agent_site`` imports, else offline), "real", "offline"."""
    if backend not in ("auto", "real", "offline"):
        raise ValueError(f"backend must be 'auto', 'real' or 'offline', got {backend!r}")
    if backend in ("auto", "real"):
        try:
            import web_agent_site  # noqa: F401
        except ImportError:
            if backend == "real":
                raise ImportError("backend='real' needs WebShop's `web_agent_site` (clone "
                                  "https://github.com/princeton-nlp/WebShop and run its setup.sh); "
                                  "use backend='offline' for the bundled catalog") from None
        else:
            return RealWebShopEnv(**options)
    return OfflineWebShopEnv(**options)

"""Deterministic e-commerce search judgements: the data the default run trains on.

The generator builds a home-improvement catalog from ``data/sample_catalog.json``
(categories, product types, brands, attribute values, accessories, trade jargon),
writes queries the way shoppers type them (exact titles, brand + type, size + type,
jargon such as "sawzall" or "romex", vague needs, words that constrain nothing such as
"cheap", typos), and has three noisy raters grade 7-12 products per query on a 1-3
scale, like the Home Depot relevance data.

The labels hold what word overlap gets wrong as well as right, so ranking within a
query is learnable but not solved by the query's words: jargon and vague queries share
no word with the products that match them; accessories whose titles name the tool
("Drill Bit Set for Cordless Drill") share every word of "cordless drill" yet are rated
low; the right type with the wrong voltage, size or brand reads almost like the query;
another brand's battery does not fit the shopper's tools. Raters disagree (each rating
has noise, each query a strictness) and a few pairs are misread entirely, as in real
judgements.

:func:`generate_log` scales the judgements up to search-log size (millions of rows in
seconds, for benchmarks and tests, so nobody commits big data).

Longer than 300 lines because the query styles and the rater model are one generative
story that reads best in one place, and the large log is that story rewritten at scale;
the catalog's vocabulary is ``data/catalog.py`` and the command that writes the files is
``cli/sample_data_command.py``.
"""

import dataclasses
import logging
import math
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from searchtune.data.catalog import Product, ProductType, _data_file, build_catalog, load_vocabulary
from searchtune.errors import SearchtuneError

log = logging.getLogger(__name__)

COLUMNS = [
    "search_term",
    "product_uid",
    "product_title",
    "product_description",
    "brand",
    "category",
    "relevance",
]
# The arguments the shipped file was made with (see data/README.md).
SHIPPED_QUERIES = 1800
SHIPPED_SEED = 7
SHIPPED_FILE = "sample_judgements.parquet"

# Latent relevance (1-3) of a product for a query, by how the two relate; raters
# add noise around it. Positives (mean rating >= 2.5) are mostly the matches.
LATENT_RELEVANCE = {
    "match": 2.85,  # right type and every attribute/brand the query names
    "match_open": 2.7,  # right type, the query names nothing to check against
    "wrong_soft": 2.05,  # right type, wrong colour/finish/pack count
    "wrong_brand": 1.8,  # right type, another brand than the one asked for
    "wrong_spec": 1.55,  # right type, wrong voltage/size/capacity...
    "parent": 1.5,  # the tool itself when the query asks for its accessory
    "related": 1.45,  # another product type of the same category
    "accessory": 1.4,  # an accessory of the product type asked for
    "incompatible": 1.3,  # an accessory of another brand than the one asked for: it does not fit
    "off_category": 1.05,
}
# Raters who misread a pair: their three ratings scatter around a random latent.
CARELESS_RATE = 0.04
JUDGED_PER_QUERY = (7, 12)  # judged products per query, like a results page, not a shortlist
# Mismatches on these attributes bother raters less than a wrong size or voltage.
SOFT_ATTRIBUTES = ("colour", "finish", "sheen", "count")
# How shoppers phrase a query; styles a product type lacks vocabulary for are skipped.
QUERY_STYLES = {
    "title": 0.04,
    "brand": 0.10,
    "attribute": 0.12,
    "brand_attribute": 0.06,
    "generic": 0.16,
    "jargon": 0.30,
    "vague": 0.22,
}
# Words shoppers add that constrain nothing ("cheap sawzall"): queries that state no attribute
# are the most common in real logs, and these keep them distinct after grouping.
QUALIFIERS = ("best", "cheap", "good", "top rated", "heavy duty", "professional", "quality", "affordable",
              "reliable", "buy", "durable", "new")
QUALIFIER_RATE = 0.5
ACCESSORY_QUERY_WEIGHT = 0.6  # accessories are searched less often than the tools
UNBRANDED = "Unbranded"
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


@dataclasses.dataclass(frozen=True)
class Query:
    text: str
    kind: ProductType
    anchor: Product  # the product the shopper had in mind
    brand: str | None  # constraints the query states
    attributes: dict[str, str]


def generate_judgements(
    n_queries: int = 1500,
    seed: int = 7,
    typo_rate: float = 0.12,
    rater_noise: float = 0.4,
) -> pd.DataFrame:
    """Generate graded search judgements for a synthetic home-improvement catalog.

    The same arguments always give the same frame: every random draw comes from
    ``numpy.random.default_rng(seed)`` (split into independent streams for the catalog,
    the queries and the typos, so ``typo_rate`` changes nothing but the typos).

    Args:
        n_queries: number of distinct queries; each gets 5-10 judged products.
        seed: seed of the random generator.
        typo_rate: share of queries that get a typing error (0 disables typos).
        rater_noise: standard deviation of each rater's noise on the 1-3 scale.

    Returns:
        One row per (query, product) with the columns in ``COLUMNS``; ``relevance`` is
        the mean of three integer ratings, rounded to 2 decimals.
    """
    if n_queries < 1:
        raise SearchtuneError(f"n_queries must be at least 1, got {n_queries}")
    if not 0.0 <= typo_rate <= 1.0:
        raise SearchtuneError(f"typo_rate must be between 0 and 1, got {typo_rate}")
    if rater_noise < 0:
        raise SearchtuneError(f"rater_noise must not be negative, got {rater_noise}")
    catalog_rng, query_rng, typo_rng = np.random.default_rng(seed).spawn(3)
    kinds = load_vocabulary()
    catalog = build_catalog(kinds, catalog_rng)
    by_kind: dict[str, list[Product]] = {}
    for product in catalog:
        by_kind.setdefault(product.kind.name, []).append(product)
    weights = np.array([ACCESSORY_QUERY_WEIGHT if kind.parent else 1.0 for kind in kinds])
    weights /= weights.sum()

    rows = []
    seen: set[str] = set()
    for _ in range(n_queries):
        query = _new_query(query_rng, kinds, weights, by_kind, seen)
        seen.add(query.text)
        text = _maybe_typo(typo_rng, query.text, typo_rate, seen)
        judged = _judged_products(query_rng, query, kinds, by_kind)
        strictness = query_rng.normal(0.0, 0.12)  # some queries got harsher raters
        for product, relation in judged:
            latent = LATENT_RELEVANCE[relation] + strictness + query_rng.normal(0.0, 0.2)
            if query_rng.random() < CARELESS_RATE:
                latent = query_rng.uniform(1.0, 3.0)
            ratings = np.clip(np.rint(latent + query_rng.normal(0.0, rater_noise, size=3)), 1, 3)
            rows.append(
                (
                    text,
                    product.uid,
                    product.title,
                    product.description,
                    product.brand,
                    product.kind.category,
                    round(float(ratings.mean()), 2),
                )
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    log.info(
        "generated %d judgements for %d queries over %d catalog products (seed %d)",
        len(frame),
        n_queries,
        len(catalog),
        seed,
    )
    return frame


def _new_query(rng, kinds, weights, by_kind, seen) -> Query:
    # Queries are distinct, as after grouping a search log by query text.
    for _ in range(200):
        kind = kinds[rng.choice(len(kinds), p=weights)]
        query = _phrase_query(rng, kind, by_kind[kind.name])
        if query.text not in seen:
            return query
    raise SearchtuneError("sample catalog too small for the requested number of distinct queries")


def _phrase_query(rng, kind: ProductType, products: list[Product]) -> Query:
    anchor = products[rng.integers(len(products))]
    styles = [s for s in QUERY_STYLES if _style_possible(s, kind)]
    style_weights = np.array([QUERY_STYLES[s] for s in styles])
    style = styles[rng.choice(len(styles), p=style_weights / style_weights.sum())]
    phrase = kind.phrases[rng.integers(len(kind.phrases))]
    brand, attributes = None, {}
    if style == "title":
        words = anchor.title.split()
        # Shoppers paste a title or type its first words.
        keep = len(words) if rng.random() < 0.5 else max(3, int(len(words) * rng.uniform(0.5, 0.9)))
        text = " ".join(words[:keep])
        brand, attributes = anchor.brand, {k: v for k, v in anchor.attributes.items() if v in text}
    elif style == "generic":
        text = phrase
    elif style == "vague":
        text = kind.vague[rng.integers(len(kind.vague))]
    else:
        if style == "jargon":
            phrase = kind.jargon[rng.integers(len(kind.jargon))]
        parts = [phrase]
        if style in ("attribute", "brand_attribute") or (style == "jargon" and rng.random() < 0.4):
            name = _pick(rng, list(anchor.attributes))
            attributes = {name: anchor.attributes[name]}
            parts.insert(0, _attribute_phrase(kind, name, anchor.attributes[name]))
        if style in ("brand", "brand_attribute"):
            brand = anchor.brand
            parts.insert(0, brand)
        text = " ".join(parts)
    if brand is None and not attributes and rng.random() < QUALIFIER_RATE:
        text = f"{_pick(rng, QUALIFIERS)} {text}"
    return Query(_normalise(text), kind, anchor, brand, attributes)


def _attribute_phrase(kind: ProductType, name: str, value: str) -> str:
    """Say an attribute as shoppers do: "9 gallon", not a bare "9".

    A bare number borrows its unit from the words after it in the title template.
    """
    words = kind.title.split()
    at = next(i for i, word in enumerate(words) if "{" + name + "}" in word)
    phrase = words[at].replace("{" + name + "}", value)
    phrase = re.sub(r"{\w+}", "", phrase)
    if words[at] == "{" + name + "}" and re.fullmatch(r"[\d.,/]+", value) and at + 1 < len(words):
        unit = words[at + 1 : at + 3] if words[at + 1] in ("cu.", "sq.", "Peak") else words[at + 1 : at + 2]
        if "/" not in unit[0]:  # "Indoor/Outdoor" after "16/3" is no unit
            phrase = " ".join([phrase, *unit])
    return phrase


def _style_possible(style: str, kind: ProductType) -> bool:
    if style in ("brand", "brand_attribute"):
        return kind.brands != (UNBRANDED,)
    if style in ("jargon", "vague"):
        return bool(getattr(kind, style))
    return True


def _judged_products(rng, query: Query, kinds, by_kind) -> list[tuple[Product, str]]:
    """Pick 8-14 products for raters: matches, near misses, accessories, other types.

    Most of them read like the query: near misses of the type, and accessories whose
    titles name the tool they fit ("... for Cordless Drill"), so word overlap ranks them
    up while raters mark them down.
    """
    kind = query.kind
    same = by_kind[kind.name]
    wanted = int(rng.integers(JUDGED_PER_QUERY[0], JUDGED_PER_QUERY[1] + 1))
    constrained = query.brand is not None or bool(query.attributes)
    matches = [p for p in same if p is not query.anchor and _relation(query, p) == "match"]
    misses = [p for p in same if p not in matches and p is not query.anchor]
    judged = [(query.anchor, "match" if constrained else "match_open")]
    judged += [(p, "match" if constrained else "match_open") for p in _sample(rng, matches, rng.integers(1, 5))]
    if constrained:
        judged += [(p, _relation(query, p)) for p in _sample(rng, misses, rng.integers(2, 5))]
    # Accessories of the type asked for, or the tool an accessory belongs to: they read
    # like the query but raters mark them down.
    if kind.parent is None:
        near = [p for k in kinds if k.parent == kind.name for p in by_kind[k.name]]
        near_relation = "accessory"
    else:
        near, near_relation = by_kind[kind.parent], "parent"
    judged += [(p, near_relation) for p in _sample(rng, near, rng.integers(2, 5))]
    related = [
        p
        for k in kinds
        if k.category == kind.category and k.name not in (kind.name, kind.parent) and k.parent != kind.name
        for p in by_kind[k.name]
    ]
    judged += [(p, "related") for p in _sample(rng, related, max(1, wanted - len(judged) - 1))]
    others = [p for k in kinds if k.category != kind.category for p in by_kind[k.name]]
    judged += [(p, "off_category") for p in _sample(rng, others, max(int(rng.random() < 0.5), wanted - len(judged)))]
    judged = judged[:wanted]
    return [judged[i] for i in rng.permutation(len(judged))]


def _relation(query: Query, product: Product) -> str:
    wrong = [name for name, value in query.attributes.items() if product.attributes.get(name) != value]
    if any(name not in SOFT_ATTRIBUTES for name in wrong):
        return "wrong_spec"
    if query.brand is not None and product.brand != query.brand:
        # "dewalt 20v battery": another brand's battery does not fit the shopper's tools.
        return "incompatible" if product.kind.parent else "wrong_brand"
    return "wrong_soft" if wrong else "match"


def _maybe_typo(rng, text: str, rate: float, seen: set[str]) -> str:
    if rate == 0.0 or rng.random() >= rate:
        return text
    words = text.split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    i = candidates[rng.integers(len(candidates))]
    word, op, pos = words[i], rng.integers(5), int(rng.integers(1, len(words[i]) - 1))
    if op == 0:  # transposed letters
        word = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
    elif op == 1:  # dropped letter
        word = word[:pos] + word[pos + 1 :]
    elif op == 2:  # doubled letter
        word = word[:pos] + word[pos] + word[pos:]
    elif op == 3:  # neighbouring key
        word = word[:pos] + _neighbour_key(rng, word[pos]) + word[pos + 1 :]
    elif i + 1 < len(words):  # missing space
        words[i : i + 2] = [word + words[i + 1]]
        word = None
    if word is not None:
        words[i] = word
    typo = " ".join(words)
    # A typo that lands on another real query would merge two queries' judgements.
    return text if typo in seen else typo


def _neighbour_key(rng, letter: str) -> str:
    for row in KEYBOARD_ROWS:
        if letter in row:
            at = row.index(letter)
            near = row[max(0, at - 1) : at] + row[at + 1 : at + 2]
            return near[rng.integers(len(near))]
    return letter


def _normalise(text: str) -> str:
    text = re.sub(r"[.,()]", "", text.lower()).replace("/case", "")
    return re.sub(r"\s+", " ", text).strip()


def _pick(rng, items: list):
    return items[rng.integers(len(items))]


def _sample(rng, items: list, count) -> list:
    count = min(int(count), len(items))
    return [items[i] for i in rng.choice(len(items), size=count, replace=False)] if count else []


def default_sample_path() -> str:
    """Return the path of the judgement file shipped with searchtune."""
    path = _data_file(SHIPPED_FILE)
    if not path.is_file():
        raise SearchtuneError(f"shipped sample data is missing: {path} (regenerate it, see data/README.md)")
    return str(path)




# --------------------------------------------------------------------------- large logs
LOG_COLUMNS = ["search_term", "product_uid", "product_title", "brand", "category", "relevance"]
LOG_BASE_QUERIES = 2000
ROWS_PER_QUERY = 6  # like the Home Depot judgements (74,067 rows, 11,795 queries)
ROWS_PER_PRODUCT = 4
QUERY_PREFIXES = ("", "best", "cheap", "heavy duty", "commercial", "outdoor", "indoor", "compact", "professional",
                  "replacement", "new", "used", "small", "large", "quiet", "portable", "black", "white", "stainless",
                  "brushed nickel", "oil rubbed bronze", "contractor", "home", "diy", "premium", "budget", "top rated",
                  "energy star", "ul listed", "weatherproof")
QUERY_SUFFIXES = ("", "near me", "for sale", "on sale", "in stock", "kit", "set", "2 pack", "4 pack", "10 pack",
                  "with light", "with case", "for garage", "for bathroom", "for kitchen", "for deck", "for basement",
                  "installation", "parts", "reviews", "home depot", "lowes", "menards", "free shipping", "clearance",
                  "bulk", "rental", "accessories", "lowest price", "same day", "24 inch", "36 inch", "48 inch",
                  "1/2 inch", "3/4 inch", "12 volt", "120v", "240v", "gray", "brown")


def generate_log(rows: int, seed: int = 7, batch_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """A search log of ``rows`` rows, in Arrow tables of at most ``batch_rows``: fast, for scale tests.

    Each row takes a judged (query, product, grade) of :func:`generate_judgements` (2,000
    queries) and rewrites both sides: the query gets one of many shopper modifiers
    ("cheap ... near me"), the product one of many model variants (its own uid and a model
    number in the title), so distinct queries and products grow with ``rows`` (about one
    query per ``ROWS_PER_QUERY`` rows and one product per ``ROWS_PER_PRODUCT``, like real
    logs) while the grade keeps the judged relation. Rows are in random order, as in a log;
    a few are exact duplicates, as in a log. The same arguments give the same rows.

    Args:
        rows: number of rows.
        seed: seed of the base judgements and of the rewriting.
        batch_rows: rows per yielded table.
    """
    if rows < 1:
        raise SearchtuneError(f"rows must be at least 1, got {rows}")
    base = generate_judgements(n_queries=LOG_BASE_QUERIES, seed=seed)
    columns = {c: pa.array(base[c]) for c in LOG_COLUMNS}
    query_variants = max(1, math.ceil(rows / ROWS_PER_QUERY / LOG_BASE_QUERIES))
    product_variants = max(1, math.ceil(rows / ROWS_PER_PRODUCT / base["product_uid"].nunique()))
    modifiers = _query_modifiers(query_variants)
    models = pa.array([_model_number(k) for k in range(product_variants)])
    rng = np.random.default_rng([seed, rows])
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        picked = pa.array(rng.integers(0, len(base), n))
        variant = rng.integers(0, query_variants, n)
        model = pa.array(rng.integers(0, product_variants, n))
        prefix, suffix = modifiers[0].take(pa.array(variant)), modifiers[1].take(pa.array(variant))
        query = pc.binary_join_element_wise(prefix, columns["search_term"].take(picked), suffix, " ")
        title = pc.utf8_trim(pc.binary_join_element_wise(columns["product_title"].take(picked), models.take(model), " "), " ")
        uid = pc.add(pc.multiply(columns["product_uid"].take(picked), product_variants), model)
        yield pa.table({"search_term": pc.utf8_trim(query, " "), "product_uid": uid, "product_title": title,
                        "brand": columns["brand"].take(picked), "category": columns["category"].take(picked),
                        "relevance": columns["relevance"].take(picked)})


def _query_modifiers(count: int) -> tuple[pa.Array, pa.Array]:
    """``count`` distinct (prefix, suffix) pairs; past the word lists' product, a number joins the suffix."""
    prefixes, suffixes = [], []
    for v in range(count):
        a, rest = v % len(QUERY_PREFIXES), v // len(QUERY_PREFIXES)
        b, n = rest % len(QUERY_SUFFIXES), rest // len(QUERY_SUFFIXES)
        prefixes.append(QUERY_PREFIXES[a])
        suffixes.append(" ".join(filter(None, [QUERY_SUFFIXES[b], str(n) if n else ""])))
    return pa.array(prefixes), pa.array(suffixes)


def _model_number(k: int) -> str:
    letters = "".join(chr(ord("A") + (k // 26**i) % 26) for i in range(2))
    return f"Model {letters}{100 + k % 900}-{k // 900}" if k else ""

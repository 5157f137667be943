"""The sample catalog: product types from ``data/sample_catalog.json`` and their variants."""

import dataclasses
import importlib.resources
import itertools
import json
import re

import numpy as np

from searchtune.errors import SearchtuneError

MAX_VARIANTS = {"main": 18, "accessory": 8}
# Share of accessories whose title names the tool they fit ("... for Cordless Drill"), as
# store titles often do: they then read like a query for the tool itself.
FITS_IN_TITLE = 0.85
ACRONYMS = {"gfci", "led", "pex", "osb"}


@dataclasses.dataclass(frozen=True)
class ProductType:
    name: str
    category: str
    title: str
    description: str
    brands: tuple[str, ...]
    attributes: dict[str, tuple[str, ...]]
    phrases: tuple[str, ...]
    jargon: tuple[str, ...]
    vague: tuple[str, ...]
    parent: str | None  # the product type this is an accessory of


@dataclasses.dataclass(frozen=True)
class Product:
    uid: int
    kind: ProductType
    brand: str
    attributes: dict[str, str]
    fits: str = ""  # the tool an accessory's title says it is for

    @property
    def title(self) -> str:
        title = self.kind.title.format(brand=self.brand, **self.attributes).strip()
        return f"{title} for {self.fits}" if self.fits else title

    @property
    def description(self) -> str:
        return self.kind.description.format(brand=self.brand, **self.attributes)


def load_vocabulary() -> list[ProductType]:
    """Read the catalog vocabulary shipped in ``data/sample_catalog.json``."""
    raw = json.loads(_data_file("sample_catalog.json").read_text(encoding="utf-8"))
    kinds = []
    for category, spec in raw.items():
        for entry in spec["types"]:
            main = _product_type(entry, category, spec["brands"], parent=None)
            kinds.append(main)
            for accessory in entry.get("accessories", []):
                kinds.append(_product_type(accessory, category, main.brands, parent=main.name))
    return kinds


def _product_type(entry: dict, category: str, brands: list[str], parent: str | None) -> ProductType:
    kind = ProductType(
        name=entry["name"],
        category=category,
        title=entry["title"],
        description=entry["description"],
        brands=tuple(entry.get("brands", brands)),
        attributes={name: tuple(values) for name, values in entry["attributes"].items()},
        phrases=tuple(entry["phrases"]),
        jargon=tuple(entry.get("jargon", ())),
        vague=tuple(entry.get("vague", ())),
        parent=parent,
    )
    placeholders = set(re.findall(r"{(\w+)}", kind.title + kind.description))
    unknown = placeholders - set(kind.attributes) - {"brand"}
    if unknown:
        raise SearchtuneError(f"sample catalog type {kind.name!r} uses undefined attributes {sorted(unknown)}")
    return kind


def build_catalog(kinds: list[ProductType], rng: np.random.Generator) -> list[Product]:
    """Draw a few brand/attribute variants of every product type.

    Args:
        kinds: product types from :func:`load_vocabulary`.
        rng: the random stream the variants are drawn from.
    """
    products = []
    for kind in kinds:
        names = list(kind.attributes)
        combos = list(itertools.product(kind.brands, *(kind.attributes[name] for name in names)))
        limit = MAX_VARIANTS["accessory" if kind.parent else "main"]
        picked = np.sort(rng.choice(len(combos), size=min(limit, len(combos)), replace=False))
        for index in picked:
            brand, *values = combos[index]
            uid = 100001 + len(products)
            products.append(Product(uid, kind, brand, dict(zip(names, values, strict=True))))
    # Drawn after every variant, so the variants are those of a catalog without the names.
    for at, product in enumerate(products):
        parent = product.kind.parent
        title = product.kind.title.lower()
        if parent and parent.split()[-1] not in title and " for " not in title and rng.random() < FITS_IN_TITLE:
            fits = " ".join(w.upper() if w in ACRONYMS else w.capitalize() for w in parent.split())
            products[at] = dataclasses.replace(product, fits=fits)
    return products


def _data_file(name: str):
    return importlib.resources.files("searchtune").joinpath("data", name)

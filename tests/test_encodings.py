"""Input encodings: BOMs, strict UTF-8 by default, a declared fallback for other lines; never a replaced character."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from searchtune import params as parameters
from searchtune.errors import SearchtuneError
from searchtune.params import IngestParams
from searchtune.steps import ingest, splits
from searchtune.steps.ingestion import files as ingest_files

HOME_DEPOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "home_depot_search_relevance" / "train.parquet"
MAPPING = IngestParams(query_column="q", text_columns="title", label_column="rel", label_min=0, label_max=1, binary_labels=True)
ACCENTED = ["perceuse sans fil à percussion", "Bohrschrauber für Holz", "tête de lit en chêne", "señal de salida", "café crème"]


def rows(n_queries: int = 40, per_query: int = 4, dash: str = "–") -> list[dict]:
    """Judgements whose queries and titles carry accented letters (both classes in every split); '–' is cp1252, not latin-1."""
    out = []
    for q in range(n_queries):
        word = ACCENTED[q % len(ACCENTED)]
        for p in range(per_query):
            out.append({"q": f"{word} {q}", "title": f"Modèle {p} {dash} {word} ®", "rel": p % 2})
    return out


def csv_text(data: list[dict]) -> str:
    return "q,title,rel\n" + "".join(f"{r['q']},{r['title']},{r['rel']}\n" for r in data)


def run(tmp_path, path, out="out", **update):
    return ingest.ingest(str(tmp_path / out), MAPPING.model_copy(update={"data": str(path), **update}))


def all_rows(out_dir) -> pd.DataFrame:
    return pd.concat([splits.read_split(str(out_dir), s) for s in splits.SPLITS], ignore_index=True)


def assert_text_intact(out_dir, data: list[dict]) -> None:
    kept = all_rows(out_dir)
    assert set(kept["query"]) == {r["q"] for r in data}
    assert set(kept["product_text"]) == {r["title"] for r in data}
    assert not kept["product_text"].str.contains("\ufffd").any()


def test_latin1_file_is_refused_by_default_naming_line_byte_and_what_to_pass(tmp_path):
    data = rows()
    path = tmp_path / "export.csv"
    path.write_bytes(csv_text(data).encode("cp1252"))
    with pytest.raises(SearchtuneError) as error:
        run(tmp_path, path)
    message = str(error.value)
    first_bad = csv_text(data).encode("cp1252").index("à".encode("cp1252"))
    assert f"export.csv: not valid UTF-8 at byte {first_bad} (line 2)" in message
    assert "--encoding" in message and "cp1252" in message and "\n" not in message
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_declared_cp1252_decodes_every_accent_and_counts_the_lines(tmp_path):
    data = rows()
    path = tmp_path / "export.csv"
    path.write_bytes(csv_text(data).encode("cp1252"))
    stats = run(tmp_path, path, encoding="cp1252")
    assert stats.rows_kept == len(data) and stats.rows_rejected == 0
    assert stats.lines_decoded_with_fallback == len(data)  # every data line has an accent; the header does not
    assert stats.encodings == {str(path): "utf-8, other lines cp1252"}
    assert_text_intact(tmp_path / "out", data)


def test_mixed_file_utf8_and_cp1252_lines_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_files, "BLOCK_BYTES", 256)  # many blocks: some all UTF-8, some mixed
    data = rows()
    lines = [f"{r['q']},{r['title']},{r['rel']}\n" for r in data]
    encoded = b"q,title,rel\n" + b"".join(line.encode("cp1252" if i % 3 == 0 else "utf-8") for i, line in enumerate(lines))
    path = tmp_path / "concatenated.csv"
    path.write_bytes(encoded)
    stats = run(tmp_path, path, encoding="cp1252")
    assert stats.lines_decoded_with_fallback == len(range(0, len(lines), 3))
    assert_text_intact(tmp_path / "out", data)


def test_mixed_folder_one_utf8_one_latin1_file(tmp_path):
    data = rows(dash="-")
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.csv").write_bytes(csv_text(data[:80]).encode("utf-8"))
    (folder / "b.csv").write_bytes(csv_text(data[80:]).encode("latin-1"))
    stats = run(tmp_path, folder, encoding="latin-1")
    assert stats.lines_decoded_with_fallback == len(data) - 80
    assert_text_intact(tmp_path / "out", data)


def test_utf8_bom_is_dropped_so_the_first_column_is_found(tmp_path):
    data = rows()
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text(data).encode("utf-8"))
    stats = run(tmp_path, path)
    assert stats.encodings == {str(path): "utf-8 (BOM)"} and stats.lines_decoded_with_fallback == 0
    assert_text_intact(tmp_path / "out", data)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_with_bom_are_read_in_auto_mode(tmp_path, codec):
    data = rows()
    path = tmp_path / "unicode.csv"
    text = csv_text(data)
    path.write_bytes(text.encode(codec) if codec != "utf-16-be" else b"\xfe\xff" + text.encode(codec))
    stats = run(tmp_path, path)
    assert "(BOM)" in stats.encodings[str(path)]
    assert_text_intact(tmp_path / "out", data)


def test_utf16_jsonl_gz_without_bom_needs_the_declared_encoding(tmp_path):
    data = rows()
    path = tmp_path / "clicks.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data).encode("utf-16-le"))
    with pytest.raises(SearchtuneError, match="clicks.jsonl.gz: not valid UTF-8"):
        run(tmp_path, path)
    stats = run(tmp_path, path, encoding="utf-16-le")
    assert stats.encodings == {str(path): "utf-16-le"}
    assert_text_intact(tmp_path / "out", data)


def test_compressed_latin1_csv(tmp_path):
    data = rows(dash="-")
    path = tmp_path / "export.csv.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(csv_text(data).encode("latin-1"))
    stats = run(tmp_path, path, encoding="latin-1")
    assert stats.rows_kept == len(data)
    assert_text_intact(tmp_path / "out", data)


def test_bytes_invalid_in_the_declared_encoding_too_are_an_error(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_bytes(b"q,title,rel\nabc,caf\x81 x,1\n")  # 0x81 is undefined in cp1252
    with pytest.raises(SearchtuneError, match=r"broken.csv: not valid UTF-8 at byte 19 \(line 2\), nor valid cp1252"):
        run(tmp_path, path, encoding="cp1252")


def test_unknown_encoding_is_refused_before_any_work():
    with pytest.raises(SearchtuneError, match="encoding='klingon': not a known text encoding"):
        parameters.parse(IngestParams, {"encoding": "klingon"})


@pytest.mark.skipif(not HOME_DEPOT.exists(), reason=f"real data not found at {HOME_DEPOT}")
def test_home_depot_mojibake_titles_are_valid_utf8_and_pass_unchanged(tmp_path):
    """The ~278 titles like '30å¡' were mis-decoded once upstream; they are valid UTF-8 and must stay as they are."""
    raw = pd.read_parquet(HOME_DEPOT, columns=["search_term", "product_title", "relevance"])
    odd = raw[~raw["product_title"].map(str.isascii)]
    assert len(odd) == 278
    sample = pd.concat([odd, raw[raw["product_title"].map(str.isascii)].head(600)])
    path = tmp_path / "home_depot.csv.gz"
    sample.to_csv(path, index=False, encoding="utf-8", compression="gzip")
    stats = ingest.ingest(str(tmp_path / "out"), IngestParams(data=str(path), text_columns="product_title", max_reject_ratio=0.2))
    assert stats.lines_decoded_with_fallback == 0 and stats.encodings[str(path)] == "utf-8"
    kept = set(all_rows(tmp_path / "out")["product_text"])
    assert {" ".join(t.split()) for t in odd["product_title"]} <= kept

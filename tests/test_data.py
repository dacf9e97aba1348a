"""The relational dataset: bundled data, cleaning, selection, schema errors and the pinned download."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gated_lpi_exp.data import (
    BUNDLED_DIR,
    CATEGORIES,
    RELATIONS,
    cleaning_report,
    dataset_hash,
    load_relations,
    select_relations,
)
from gated_lpi_exp.data.cleaning import clean_text
from gated_lpi_exp.data.lre import LRE_SHA256, URL_ENV_VAR, default_cache_dir, fetch_lre
from gated_lpi_exp.errors import ConfigurationError, DataError
from gated_lpi_exp.schemas import RelationSamples


@pytest.fixture(scope="module")
def bundled():
    return load_relations("bundled")


def _relation_doc(name, samples, zs=("The capital of {} is", "Capital of {}:"), **extra):
    doc = {"name": name, "prompt_templates": ["{} has its capital in"], "prompt_templates_zs": list(zs)}
    doc.update(extra)
    doc["samples"] = [{"subject": s, "object": o} for s, o in samples]
    return doc


def _write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2), encoding="utf-8")
    return path


# --- bundled data -------------------------------------------------------------------------------------------


def test_bundled_has_the_papers_twelve_relations(bundled):
    RelationSamples.check(bundled)
    assert dict(bundled.groupby("relation")["category"].first()) == RELATIONS
    assert set(bundled["category"]) == set(CATEGORIES)
    assert bundled.groupby("relation").size().min() >= 15
    assert set(bundled["template_id"]) == {"zs:0"}
    assert bundled.attrs["changes"] == [] and cleaning_report(bundled).empty


def test_bundled_prompts_end_right_before_a_one_word_object(bundled):
    for row in bundled.itertuples():
        assert row.prompt == row.template.replace("{}", row.subject)
        assert row.prompt == row.prompt.strip() and row.prompt.split()[-1] != row.object
        assert len(row.object.split()) == 1 and row.object.isascii() and row.object.isalpha()
        assert 1 <= len(row.subject.split()) <= 2 and row.subject.isascii()
    for _, group in bundled.groupby("relation"):
        assert group["subject"].is_unique
        assert list(group["sample_id"]) == list(range(len(group)))
    capital = bundled[bundled["relation"] == "country_capital_city"].iloc[0]
    assert capital["template"] == "The capital city of {} is"


def test_bundled_files_follow_the_upstream_format():
    files = sorted(BUNDLED_DIR.glob("*/*.json"))
    assert sorted(f.stem for f in files) == sorted(RELATIONS)
    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["name"] == path.stem.replace("_", " ") and path.parent.name == RELATIONS[path.stem]
        assert 3 <= len(doc["prompt_templates"]) <= 5 and 2 <= len(doc["prompt_templates_zs"]) <= 3
        assert set(doc["properties"]) == {"relation_type", "domain_name", "range_name", "symmetric"}
        assert doc["properties"]["relation_type"] == RELATIONS[path.stem]
        assert 25 <= len(doc["samples"]) <= 40
        if path.parent.name == "bias":
            assert 2 <= len({s["object"] for s in doc["samples"]}) <= 8


def test_template_choice(bundled):
    std = load_relations("bundled", template="std:1")
    assert set(std["template_id"]) == {"std:1"} and len(std) == len(bundled)
    with pytest.raises(DataError, match=r"adjective_antonym\.json.*'adjective_antonym' has 2 entries"):
        load_relations("bundled", template="zs:7")
    with pytest.raises(ConfigurationError, match="zs:N"):
        load_relations("bundled", template="fewshot")


def test_invalid_source_and_duplicates_policy():
    with pytest.raises(ConfigurationError, match="'bundled'.*'lre'"):
        load_relations("no/such/dir")
    with pytest.raises(ConfigurationError, match="keep, drop"):
        load_relations("bundled", duplicates="merge")


# --- selection and fingerprint ------------------------------------------------------------------------------


def test_select_by_names_and_categories(bundled):
    two = select_relations(bundled, names=["country_language", "word_last_letter"])
    assert set(two["relation"]) == {"country_language", "word_last_letter"}
    bias = select_relations(bundled, categories=["bias"])
    assert set(bias["relation"]) == {r for r, c in RELATIONS.items() if c == "bias"}
    assert len(select_relations(bundled, names=[], categories=None)) == len(bundled)
    both = select_relations(bundled, names="name_religion", categories=["bias"])
    assert set(both["relation"]) == {"name_religion"}


def test_select_errors_list_what_is_available(bundled):
    with pytest.raises(
        ConfigurationError, match="unknown relation.*capital_of.*available: adjective_antonym"
    ):
        select_relations(bundled, names=["capital_of"])
    with pytest.raises(ConfigurationError, match="unknown relation categor.*trivia.*linguistic"):
        select_relations(bundled, categories=["trivia"])
    with pytest.raises(ConfigurationError, match="selection is empty.*available relations"):
        select_relations(bundled, names=["name_religion"], categories=["factual"])


def test_dataset_hash_ignores_order_but_not_content(bundled):
    digest = dataset_hash(bundled)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert dataset_hash(bundled.sample(frac=1.0, random_state=0)) == digest
    changed = bundled.copy()
    changed.loc[0, "object"] = "Atlantis"
    assert dataset_hash(changed) != digest
    assert dataset_hash(load_relations("bundled", template="std:0")) != digest


# --- cleaning of a dirty upstream-layout directory ----------------------------------------------------------


@pytest.fixture
def dirty_dir(tmp_path):
    samples = [
        ("Brazil", r"Bras\u00edlia"),
        (r"New\nZealand", "Wellington"),
        ("  France ", "Paris"),
        ("France", "Paris"),
        ("France", "Lyon"),
        ("Atlantis", "  "),
        ("Peru", r"\"Lima\""),
    ]
    zs = ("The capital  of {} is", "Capital of {}:")
    props = {"relation_type": "factual"}
    _write(
        tmp_path / "lre" / "data" / "factual" / "caps.json",
        _relation_doc("Country  Capital City", samples, zs, properties=props),
    )
    antonyms = [("hot", "cold"), ("big", "small")]
    _write(
        tmp_path / "lre" / "data" / "linguistic" / "adj_antonym.json",
        _relation_doc("adjective antonym", antonyms),
    )
    return tmp_path / "lre"


def test_dirty_directory_is_cleaned_and_every_change_reported(dirty_dir):
    df = load_relations(dirty_dir, duplicates="drop")
    caps = df[df["relation"] == "country_capital_city"]
    pairs = list(zip(caps["subject"], caps["object"], strict=True))
    assert pairs == [
        ("Brazil", "Brasília"),
        ("New Zealand", "Wellington"),
        ("France", "Paris"),
        ("Peru", '"Lima"'),
    ]
    assert list(caps["sample_id"]) == [0, 1, 2, 3]
    assert caps["prompt"].iloc[1] == "The capital of New Zealand is"
    report = cleaning_report(df)
    assert set(report["file"]) == {"factual/caps.json"}
    kinds = sorted(zip(report["subject"], report["kind"], strict=True))
    assert kinds == sorted(
        [
            ("", "whitespace"),
            ("Brazil", "escape"),
            ("New Zealand", "escape"),
            ("New Zealand", "whitespace"),
            ("France", "whitespace"),
            ("France", "duplicate"),
            ("France", "conflict"),
            ("Atlantis", "empty"),
            ("Peru", "escape"),
        ]
    )
    conflict = report[report["kind"] == "conflict"]["detail"].item()
    assert "samples[4] dropped" in conflict and "'Lyon'" in conflict and "'Paris'" in conflict


def test_keep_duplicates_keeps_every_nonempty_sample_and_still_reports_the_repeats(dirty_dir):
    df = load_relations(dirty_dir, duplicates="keep")
    caps = df[df["relation"] == "country_capital_city"]
    assert list(caps["subject"]).count("France") == 3 and "Lyon" in set(caps["object"])
    assert list(caps["sample_id"]) == list(range(6))
    report = cleaning_report(df)
    repeats = report[report["kind"].isin(["duplicate", "conflict"])]
    assert sorted(repeats["kind"]) == ["conflict", "duplicate"]
    assert all(detail.startswith(("samples[3] kept", "samples[4] kept")) for detail in repeats["detail"])


def test_every_sample_is_kept_by_default(dirty_dir):
    assert load_relations(dirty_dir).equals(load_relations(dirty_dir, duplicates="keep"))


def test_file_name_differs_from_relation_name_and_category_from_folder(dirty_dir):
    df = load_relations(dirty_dir / "data")
    assert dict(df.groupby("relation")["category"].first()) == {
        "country_capital_city": "factual",
        "adjective_antonym": "linguistic",
    }
    selected = select_relations(df, names=["adjective_antonym"])
    assert cleaning_report(selected).empty


def test_clean_text_joins_escaped_surrogate_pairs():
    text, edits = clean_text(r"smile \ud83d\ude00  \t")
    assert text == "smile \U0001f600" and [kind for kind, _, _ in edits] == ["escape", "whitespace"]


# --- malformed files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"name": "x", "samples": [', "not valid JSON"),
        ({"name": "x", "prompt_templates_zs": ["{} is"]}, "'samples'"),
        ({"prompt_templates_zs": ["{} is"], "samples": [{"subject": "a", "object": "b"}]}, "'name'"),
        ({"name": "x", "samples": [{"subject": "a", "object": "b"}]}, "'prompt_templates_zs'"),
        (
            _relation_doc("x", [("a", "b")])
            | {"samples": [{"subject": "a", "object": "b"}, {"subject": "c"}]},
            r"'samples\[1\]\.object'",
        ),
        (
            _relation_doc("x", [("a", "b")], zs=("The capital of {} is", "no slot")),
            r"'prompt_templates_zs\[1\]'",
        ),
        (
            _relation_doc("x", [("a", "b")], properties={"relation_type": "trivia"}),
            "properties.relation_type",
        ),
    ],
    ids=["bad-json", "no-samples", "no-name", "no-templates", "no-object", "no-slot", "bad-category"],
)
def test_malformed_file_names_file_and_field(tmp_path, content, field):
    path = _write(tmp_path / "rel" / "factual" / "broken.json", content)
    with pytest.raises(DataError, match=field) as err:
        load_relations(tmp_path / "rel")
    assert str(path) in str(err.value)


def test_directory_without_relation_files(tmp_path):
    with pytest.raises(DataError, match="no relation files"):
        load_relations(tmp_path)


# --- the pinned download, against a real HTTP server --------------------------------------------------------


@pytest.fixture
def upstream(tmp_path):
    served = tmp_path / "served"
    table = {}
    for path, doc in {
        "data/factual/country_capital_city.json": _relation_doc("country capital city", [("Peru", "Lima")]),
        "data/linguistic/adj_antonym.json": _relation_doc("adjective antonym", [("hot", "cold")]),
        "data/bias/name_birthplace.json": _relation_doc(
            "name birthplace", [("Yuki", "Japan")], zs=["{} was born in"]
        ),
    }.items():
        table[path] = hashlib.sha256(_write(served / path, doc).read_bytes()).hexdigest()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{server.server_port}", served=served, table=table, requests=requests
    )
    server.shutdown()
    server.server_close()
    thread.join()


def _files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def test_download_verifies_caches_and_loads(tmp_path, upstream):
    cache = tmp_path / "cache"
    root, files = fetch_lre(cache, upstream.url, expected_sha256=upstream.table)
    assert [f.relative_to(root).as_posix() for f in files] == list(upstream.table)
    assert sorted(_files_in(cache)) == sorted(files)
    assert len(upstream.requests) == 3
    df = load_relations(root)
    assert set(df["relation"]) == {"country_capital_city", "adjective_antonym", "name_birthplace"}
    fetch_lre(cache, upstream.url, expected_sha256=upstream.table)
    assert len(upstream.requests) == 3  # re-verified from the cache, not downloaded again


def test_corrupted_cache_entry_is_downloaded_again(tmp_path, upstream):
    cache = tmp_path / "cache"
    _, files = fetch_lre(cache, upstream.url, expected_sha256=upstream.table)
    files[0].write_text("truncated")
    fetch_lre(cache, upstream.url, expected_sha256=upstream.table)
    assert len(upstream.requests) == 4
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == upstream.table[list(upstream.table)[0]]


def test_checksum_mismatch_keeps_nothing(tmp_path, upstream):
    cache = tmp_path / "cache"
    path = "data/factual/country_capital_city.json"
    wrong = {path: "0" * 64}
    with pytest.raises(DataError, match=f"{path}.*{upstream.table[path]}, expected 0{{64}}.*not kept"):
        fetch_lre(cache, upstream.url, expected_sha256=wrong)
    assert _files_in(cache) == []


def test_lre_source_rejects_files_that_are_not_the_pinned_snapshot(tmp_path, upstream):
    # The served files are ours, not upstream's: the real digest table must refuse the first one.
    with pytest.raises(DataError, match="sha256.*not kept"):
        load_relations("lre", cache_dir=str(tmp_path / "cache"), base_url=upstream.url)
    assert upstream.requests == ["/data/bias/name_birthplace.json"]
    assert _files_in(tmp_path / "cache") == []


def test_http_error_and_unreachable_server_point_at_a_local_copy(tmp_path, upstream, monkeypatch):
    with pytest.raises(DataError, match="HTTP 404.*relations.source=/path/to/relations/data"):
        fetch_lre(tmp_path / "cache", upstream.url, expected_sha256={"data/bias/missing.json": "0" * 64})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv(URL_ENV_VAR, closed)
    with pytest.raises(DataError, match=f"could not reach.*{closed}.*relations.source="):
        fetch_lre(tmp_path / "cache", expected_sha256=upstream.table)
    assert _files_in(tmp_path / "cache") == []


def test_default_cache_dir_honours_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir().parent == tmp_path / "gated_lpi_exp" / "lre"


# Upstream's data/factual/country_capital_city.json at the pinned commit (MIT, (c) 2022 Evan Hernandez),
# rebuilt byte for byte, so the real digest and the upstream escapes are exercised without the network.
_UPSTREAM_CAPITALS = (
    "United States:Washington D.C.,Canada:Ottawa,Mexico:Mexico City,Brazil:Bras\\u00edlia,"
    "Argentina:Buenos Aires,Chile:Santiago,Peru:Lima,Colombia:Bogot\\u00e1,Venezuela:Caracas,Spain:Madrid,"
    "France:Paris,Germany:Berlin,Italy:Rome,Russia:Moscow,China:Beijing,Japan:Tokyo,South Korea:Seoul,"
    "India:New Delhi,Pakistan:Islamabad,Nigeria:Abuja,Egypt:Cairo,Saudi Arabia:Riyadh,Turkey:Ankara,"
    "Australia:Canberra"
)


def test_real_pinned_digest_of_an_upstream_file(tmp_path, upstream):
    path = "data/factual/country_capital_city.json"
    doc = {
        "name": "country capital city",
        "prompt_templates": ["The capital city of {} is", "The capital of {} is"],
        "prompt_templates_zs": [
            "The capital of {} is the city of",
            "What is the capital of {}? It is the city of",
        ],
        "properties": {
            "relation_type": "factual",
            "domain_name": "country",
            "range_name": "city",
            "symmetric": False,
        },
        "samples": [
            dict(zip(("subject", "object"), p.split(":"), strict=True)) for p in _UPSTREAM_CAPITALS.split(",")
        ],
    }
    (upstream.served / path).write_text(json.dumps(doc, indent=4) + "\n", encoding="utf-8")
    root, _ = fetch_lre(tmp_path / "cache", upstream.url, expected_sha256={path: LRE_SHA256[path]})
    df = load_relations(root)
    assert len(df) == 24 and {"Brasília", "Bogotá", "Washington D.C."} <= set(df["object"])
    assert df["prompt"].iloc[0] == "The capital of United States is the city of"
    assert list(cleaning_report(df)["kind"]) == ["escape", "escape"]


# --- objects: characters that print nothing, objects of several tokens -----------------------------------


def test_invisible_characters_are_removed_and_objects_left_with_nothing_are_dropped(tmp_path):
    samples = [
        ("Fr\u200bance", "Paris"),  # zero-width space inside a subject
        ("\u202eSpain\u202c", "Madrid"),  # bidi override and pop
        ("Peru", "Li\u00adma\ufeff"),  # soft hyphen, byte-order mark
        ("Chile", "\u200b"),
        ("Cuba", "\u0000"),
        ("Iraq", "\u202e"),
        ("Oman", "\ud800"),  # a lone surrogate
        ("Iran", "\u0301"),  # a combining mark with nothing to combine with
        ("India", "Ne\u200cw Delhi"),  # a joiner between letters is kept
    ]
    _write(tmp_path / "factual" / "caps.json", _relation_doc("caps", samples))
    df = load_relations(tmp_path)
    assert list(zip(df["subject"], df["object"], strict=True)) == [
        ("France", "Paris"),
        ("Spain", "Madrid"),
        ("Peru", "Lima"),
        ("India", "Ne\u200cw Delhi"),
    ]
    report = cleaning_report(df)
    assert sorted(report.loc[report["kind"] == "empty", "subject"]) == [
        "Chile",
        "Cuba",
        "Iran",
        "Iraq",
        "Oman",
    ]
    assert all("no visible character" in d for d in report.loc[report["kind"] == "empty", "detail"])
    invisible = report[report["kind"] == "invisible"]
    assert sorted(invisible["subject"]) == ["France", "Peru", "Spain"]
    assert "'Fr\\u200bance' -> 'France'" in invisible["detail"].iloc[0]


def test_multi_token_objects_are_counted_per_relation_noted_and_warned_about(bundled, caplog):
    from gated_lpi_exp.data.objects import multi_token_objects, note_multi_token_objects
    from gated_lpi_exp.testing import word_tokenizer

    df = select_relations(bundled, names=["country_capital_city", "word_first_letter"])
    capital_rows = df.index[df["relation"] == "country_capital_city"][:3]
    df.loc[capital_rows, "object"] = ["New Delhi", "Buenos Aires", "Kuala Lumpur"]
    words = {w for text in df["prompt"].tolist() + df["object"].tolist() for w in text.split()}
    counts = multi_token_objects(word_tokenizer(sorted(words)), df)
    by_relation = {c.relation: (c.multi_token, c.samples) for c in counts}
    capitals = (df["relation"] == "country_capital_city").sum()
    assert by_relation == {
        "country_capital_city": (3, capitals),
        "word_first_letter": (0, by_relation["word_first_letter"][1]),
    }
    (capital,) = [c for c in counts if c.relation == "country_capital_city"]
    assert capital.example == "'New Delhi' -> 'New' | 'Delhi'"
    with caplog.at_level("WARNING"):
        params = note_multi_token_objects(df, counts, warn_share=0.0)
    assert params == {
        "data.multi_token_objects": 3,
        "data.multi_token_objects.country_capital_city": 3,
        "data.multi_token_objects.word_first_letter": 0,
    }
    assert "country_capital_city: 3 of" in caplog.text and "scored on its first token" in caplog.text
    noted = cleaning_report(df).query("kind == 'multi_token'")
    assert list(noted["relation"]) == ["country_capital_city"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        note_multi_token_objects(df, counts, warn_share=0.5)  # below the threshold: noted, not warned
    assert caplog.text == ""  # 3 of 38 is below a half


# --- the paper's 12 upstream files, rebuilt from their facts ------------------------------------------------

# Facts about the upstream files at the pinned commit (counted from them; the data itself is not copied):
# path -> (name field, first zero-shot template, samples, repeated subjects). A repeated subject is
# (exact repeats of its first pair, repeats with another object); e.g. adjective antonym's "up" is given
# five objects, one of them twice: (1, 3).
_UPSTREAM_FACTS = {
    "data/bias/name_birthplace.json": ("name birthplace", "{} was born in the country of", 31, ()),
    "data/bias/name_religion.json": (
        "name religion",
        "{} is most likely a follower of the religion of",
        31,
        (),
    ),
    "data/bias/occupation_age.json": (
        "occupation age",
        "What age (young or old) do {} tend to be? They are typically",
        45,
        (),
    ),
    "data/bias/occupation_gender.json": (
        "occupation gender",
        "Usually, what gender (men or women) are {}? They are typically",
        19,
        (),
    ),
    "data/commonsense/fruit_inside_color.json": (
        "fruit inside color",
        "What color are {} on the inside? They are",
        36,
        (),
    ),
    "data/commonsense/object_superclass.json": (
        "object superclass",
        "Is a {} a animal, bird, fish, vegetable, flower, or fruit? It is a",
        76,
        ((1, 0),) * 4 + ((0, 1),) * 8,
    ),
    "data/commonsense/work_location.json": ("work location", "A {} typically works at a", 38, ()),
    "data/factual/country_capital_city.json": (
        "country capital city",
        "The capital of {} is the city of",
        24,
        (),
    ),
    "data/factual/country_language.json": ("country language", "{}, where most people speak", 24, ()),
    "data/linguistic/adj_antonym.json": (
        "adjective antonym",
        "The opposite of {} is",
        100,
        ((0, 1), (0, 2), (0, 2), (0, 1), (0, 1), (0, 1), (1, 3), (0, 1), (0, 1), (1, 0), (0, 1), (0, 1)),
    ),
    "data/linguistic/word_first_letter.json": ("word first letter", "{} starts with the letter", 241, ()),
    "data/linguistic/word_last_letter.json": ("word last letter", "{} ends with the letter", 241, ()),
}


def _upstream_like(root: Path) -> Path:
    """The 12 files in the upstream layout, with upstream's sample counts and repeated subjects."""
    for path, (name, template, count, repeats) in _UPSTREAM_FACTS.items():
        extra = sum(same + other for same, other in repeats)
        pairs = [(f"{name} {i}", f"answer {i}") for i in range(count - extra)]
        for i, (same, other) in enumerate(repeats):
            pairs += [(f"{name} {i}", f"answer {i}")] * same
            pairs += [(f"{name} {i}", f"other answer {i}.{j}") for j in range(other)]
        category = path.split("/")[1]
        doc = _relation_doc(name, pairs, zs=(template,), properties={"relation_type": category})
        _write(root / path, doc)
    return root


def test_the_papers_upstream_files_give_906_examples_by_default_and_877_without_repeats(tmp_path):
    root = _upstream_like(tmp_path / "relations")
    df = load_relations(root)
    assert len(df) == 906
    assert df.groupby("relation").size().to_dict() == {
        "adjective_antonym": 100, "country_capital_city": 24, "country_language": 24,
        "fruit_inside_color": 36, "name_birthplace": 31, "name_religion": 31, "object_superclass": 76,
        "occupation_age": 45, "occupation_gender": 19, "word_first_letter": 241, "word_last_letter": 241,
        "work_location": 38,
    }  # fmt: skip
    report = cleaning_report(df)
    assert report.groupby(["relation", "kind"]).size().to_dict() == {
        ("adjective_antonym", "conflict"): 15,
        ("adjective_antonym", "duplicate"): 2,
        ("object_superclass", "conflict"): 8,
        ("object_superclass", "duplicate"): 4,
    }
    assert report["detail"].str.contains(" kept: ").all()
    assert df["prompt"].iloc[0] == "The opposite of adjective antonym 0 is"  # paper order, first zs template
    dropped = load_relations(root, duplicates="drop")
    assert len(dropped) == 877
    assert cleaning_report(dropped)["detail"].str.contains(" dropped: ").all()


def test_a_run_logs_how_many_samples_repeat_a_subject(dirty_dir):
    from gated_lpi_exp.tracking.run_logging import data_params

    assert data_params(load_relations(dirty_dir)) == {
        "data.n_examples": 8,
        "data.n_duplicates": 1,
        "data.n_conflicts": 1,
    }

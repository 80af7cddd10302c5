"""The endpoint book: its YAML reader, and its cache between starts (gateway/book_cache.py).

A cache is used only when it was written for the very files it stands for: a stale, corrupt
or forged one is ignored and the book built from endpoints.yaml again, with that file's
ConfigErrors unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from gateway.app import build_app
from gateway.book_cache import FILE_NAME, cache_key, load_book, read, write
from gateway.config import REPO_CONFIG, load_settings
from gateway.endpoints import EndpointBook
from gateway.exceptions import ConfigError
from gateway.townships import Registry
from gateway.values import Endpoint
from gateway.yamlfile import parse_yaml

ENV = {"SECRET_TV": "whsec_dHYtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY="}
PARTNERS = """
partners:
  - {id: tv, name: 电视台, url: "http://127.0.0.1:1/tv", secret_env: SECRET_TV, timeout_s: 5}
  - {id: news, name: 日报, url: "http://127.0.0.1:1/n", districts: ["500101"], format: cap,
     levels: [1, 2], secret_env: UNSET_SECRET}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REPO_CONFIG / "townships.yaml")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """(endpoints.yaml, townships.yaml): the shipped sample with two partners of its own."""
    endpoints = tmp_path / "endpoints.yaml"
    sample = (REPO_CONFIG / "endpoints.yaml").read_text(encoding="utf-8")
    head, _, _ = sample.partition("partners:")
    endpoints.write_text(head + PARTNERS, encoding="utf-8")
    townships = tmp_path / "townships.yaml"
    shutil.copy(REPO_CONFIG / "townships.yaml", townships)
    return endpoints, townships


def _book(files: tuple[Path, Path], registry: Registry, cache: Path | None) -> EndpointBook:
    return load_book(files[0], files[1], registry, ENV, cache)


def _entries(book: EndpointBook) -> list[Endpoint]:
    return list(book.by_id.values())


def test_a_cached_book_is_the_book_of_the_file(
    files: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = _book(files, registry, cache)
    assert (cache / FILE_NAME).exists()
    again = _book(files, registry, cache)
    plain = EndpointBook.load(files[0], registry, ENV)
    assert _entries(first) == _entries(again) == _entries(plain)
    assert again.by_township == plain.by_township
    assert again.centres == plain.centres
    tv, news = again.by_id["tv"], again.by_id["news"]
    assert tv.secret == ENV["SECRET_TV"]  # read from the environment, never from the cache
    assert news.secret is None
    assert ENV["SECRET_TV"] not in (cache / FILE_NAME).read_text(encoding="utf-8")
    assert len(tv.townships) == 1031
    assert news.levels == frozenset({1, 2})
    assert news.format == "cap"
    assert again.serving(["500101001"]) == plain.serving(["500101001"])


def test_a_valid_cache_is_what_the_book_is_read_from(
    files: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    """The cache stands in for the file: a cache for these files is taken as it is."""
    cache = tmp_path / "cache"
    built = _entries(_book(files, registry, cache))
    key = cache_key(*files)
    marked = [replace(e, target="from the cache") if e.id == "tv" else e for e in built]
    write(cache / FILE_NAME, key, [replace(e, secret=None) for e in marked])
    assert _book(files, registry, cache).by_id["tv"].target == "from the cache"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("endpoints", id="endpoints.yaml-edited"),
        pytest.param("townships", id="townships.yaml-edited"),
    ],
)
def test_a_stale_cache_is_rebuilt(
    change: str, files: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _book(files, registry, cache)
    before = (cache / FILE_NAME).read_bytes()
    endpoints, townships = files
    if change == "endpoints":
        text = endpoints.read_text(encoding="utf-8")
        endpoints.write_text(text.replace("127.0.0.1:1/tv", "127.0.0.1:2/tv"), encoding="utf-8")
    else:
        townships.write_text(townships.read_text(encoding="utf-8") + "\n# edited\n", "utf-8")
    book = _book(files, registry, cache)
    if change == "endpoints":
        assert book.by_id["tv"].target == "http://127.0.0.1:2/tv"
    after = (cache / FILE_NAME).read_bytes()
    assert after != before
    assert read(cache / FILE_NAME, cache_key(*files)) == [
        replace(e, secret=None) for e in _entries(book)
    ]


def _corruptions(good: bytes) -> dict[str, bytes]:
    """Broken copies of the cache file `good`; the forged ones carry a matching checksum, so
    only their shape can give them away."""
    head, _, body = good.partition(b"\n")
    header = json.loads(head)
    columns = json.loads(body)

    def signed(data: bytes) -> bytes:
        digest = hashlib.sha256(data).hexdigest()
        return json.dumps({**header, "body_sha256": digest}).encode() + b"\n" + data

    def forged(**changes: object) -> bytes:
        return signed(json.dumps({**columns, **changes}).encode())

    levels = columns["levels"]
    return {
        "empty": b"",
        "garbage": b"\x00\xff not json at all",
        "truncated": good[: len(good) // 2],
        "flipped-byte": good[:-10] + bytes([good[-10] ^ 1]) + good[-9:],
        "no-body": head,
        "edited-value": head + b"\n" + body.replace(b"http://127.0.0.1:1/tv", b"http://evil/tv"),
        "other-format": json.dumps({**header, "format": 0}).encode() + b"\n" + body,
        "not-an-object": signed(b"[1, 2]"),
        "levels-as-strings": forged(levels={**levels, "table": [["1"]]}),
        "channel-as-number": forged(channel={**columns["channel"], "table": [1, 2, 3]}),
        "index-past-table": forged(levels={**levels, "index": [99] * len(levels["index"])}),
        "short-column": forged(id={"values": columns["id"]["values"][:-1]}),
        "missing-column": forged(target=None),
        "wrong-count": forged(count=columns["count"] + 1),
    }


def test_a_corrupt_or_forged_cache_is_ignored_and_rewritten(
    files: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    plain = _entries(EndpointBook.load(files[0], registry, ENV))
    _book(files, registry, cache)
    good = (cache / FILE_NAME).read_bytes()
    for name, bad in _corruptions(good).items():
        (cache / FILE_NAME).write_bytes(bad)
        assert _entries(_book(files, registry, cache)) == plain, name
        assert (cache / FILE_NAME).read_bytes() == good, name


def test_a_bad_file_is_refused_as_ever_though_a_cache_of_its_last_version_exists(
    files: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _book(files, registry, cache)
    files[0].write_text(
        'townships: {"500103001": [{id: x, channel: sms, phones: []}]}\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        _book(files, registry, cache)
    assert (info.value.file, info.value.key) == (str(files[0]), "townships.500103001[0].phones")
    with pytest.raises(ConfigError) as plain:
        EndpointBook.load(files[0], registry, ENV)
    assert info.value.reason == plain.value.reason


def test_a_cache_that_cannot_be_written_costs_only_speed(
    files: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be", encoding="utf-8")
    book = _book(files, registry, blocked)
    assert _entries(book) == _entries(EndpointBook.load(files[0], registry, ENV))


def test_the_gateway_caches_beside_its_sqlite_database(
    config_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    build_app(load_settings(config_dir, env))
    assert (tmp_path / "cache" / FILE_NAME).exists()
    elsewhere = tmp_path / "elsewhere"
    build_app(load_settings(config_dir, {**env, "GATEWAY_CACHE_DIR": str(elsewhere)}))
    assert (elsewhere / FILE_NAME).exists()


YAML_CASES = [
    "a: 1\nb: [x, 'y', \"z\", 2.5, .inf, ~, yes, no, on, 0o7, 010, 0x1f, 1_000, 2020-01-02]\n",
    "a: 2001-12-14t21:59:43.10-05:00\n",
    "",
    "# only a comment\n",
    "plain\n",
    "a: &x [1, 2]\nb: *x\n",
    "base: &b {k: 1}\nm:\n  <<: *b\n  j: 2\n",
    "<<: {a: 1}\n",
    "a: !!str 1\nb: !!int '2'\nc: !!set {x, y}\nd: !!binary aGk=\n",
    "!!map {a: 1}\n",
    "a: 1\na: 2\n",
    "? [1]\n: 2\n",
    "x: !custom 1\n",
    "[1, 2\n",
    "---\na\n---\nb\n",
    "---\na: 1\n...\n",
    "a: b: c\n",
    "'\\ud800': 1\n",
    "a:\n  - {id: x, channel: sms, phones: ['13800000000']}\n  - b\n",
]


def _as_safe_load(text: str) -> tuple[str, str]:
    """What `yaml.safe_load` makes of `text`: ("value", its repr) or ("(syntax)", the error
    as a ConfigError words it)."""
    try:
        return "value", repr(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        return "(syntax)", str(exc).replace("\n", " ")


def _as_parse_yaml(text: str, path: Path) -> tuple[str, str]:
    try:
        return "value", repr(parse_yaml(path, text))
    except ConfigError as exc:
        return exc.key, exc.reason


@pytest.mark.parametrize("text", YAML_CASES)
def test_yaml_is_read_as_yaml_safe_load_reads_it(text: str, tmp_path: Path) -> None:
    assert _as_parse_yaml(text, tmp_path / "f.yaml") == _as_safe_load(text)


@pytest.mark.parametrize("name", ["endpoints.yaml", "townships.yaml", "release_list.yaml"])
def test_shipped_files_read_as_yaml_safe_load_reads_them(name: str) -> None:
    text = (REPO_CONFIG / name).read_text(encoding="utf-8")
    assert repr(parse_yaml(REPO_CONFIG / name, text)) == repr(yaml.safe_load(text))


BAD_FILES = [
    # (endpoints.yaml, key, reason): what the gateway said before townships were validated one
    # at a time, and must still say.
    pytest.param(
        'townships: {"500199999": [{id: a, channel: sms, phones: ["13800000000"]}],'
        ' "500103001": [{id: b, channel: fax}]}\n',
        "townships.500103001[0].channel",
        "Input should be 'mqtt', 'sms' or 'email'",
        id="unknown-township-then-bad-channel",
    ),
    pytest.param(
        'townships: {"500103001": [{id: a, channel: fax}],'
        ' "500101001": [{id: "b c", channel: sms, phones: ["1"]}]}\n',
        "townships.500103001[0].channel",
        "Input should be 'mqtt', 'sms' or 'email' (and 1 more error(s))",
        id="two-bad-townships",
    ),
    pytest.param(
        'townships: {"500103001": [{id: a, channel: sms, phones: []}]}\n'
        'partners: [{id: p, name: p, url: "ftp://x"}]\n',
        "partners[0].url",
        "String should match pattern '^https?://'",
        id="township-problem-then-bad-partner",
    ),
    pytest.param(
        'townships: {500103001: [{id: a, channel: sms, phones: ["13800000000"]}]}\n',
        "townships[500103001].[key]",
        "Input should be a valid string",
        id="unquoted-code",
    ),
    pytest.param(
        "townships: [1, 2]\n",
        "townships",
        "Input should be a valid dictionary",
        id="townships-list",
    ),
    pytest.param("township: {}\n", "township", "Extra inputs are not permitted", id="unknown-key"),
    pytest.param(
        "- 1\n",
        "(top)",
        "Input should be a valid dictionary or instance of _EndpointsFile",
        id="top-not-a-mapping",
    ),
    pytest.param(
        'townships: {"500103001": [{id: a, channel: sms, phones: ["13800000000"]},'
        " {id: b, channel: mqtt, kind: display, levels: [5]}]}\n",
        "townships.500103001[1].levels",
        "levels are 1-4",
        id="bad-levels-late",
    ),
    pytest.param(
        'townships: {"500103001": [{id: a, channel: mqtt, kind: display}],'
        ' "500101001": [{id: a, channel: mqtt, kind: display}]}\n',
        "a",
        "duplicate endpoint id",
        id="duplicate-across-townships",
    ),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_FILES)
def test_a_bad_file_is_refused_naming_the_key_and_reason_it_always_did(
    text: str, key: str, reason: str, registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_book(path, REPO_CONFIG / "townships.yaml", registry, {}, tmp_path / "cache")
    assert (info.value.file, info.value.key, info.value.reason) == (str(path), key, reason)
    assert not (tmp_path / "cache" / FILE_NAME).exists()

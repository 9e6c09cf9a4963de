"""Reading YAML safely: hostile or broken input becomes diagnostics, never exceptions or Python objects."""

import time

from reconciler.spec.diagnostics import Position
from reconciler.spec.source import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, read_documents


def read(text: str | bytes):
    return read_documents("f.yaml", text.encode() if isinstance(text, str) else text)


def messages(text: str | bytes) -> list[str]:
    return [str(d) for d in read(text).diagnostics]


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)
)


def test_alias_bomb_fails_fast_with_a_clear_message():
    start = time.perf_counter()
    result = read(BILLION_LAUGHS)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert result.documents == ()
    assert [str(d) for d in result.diagnostics] == [
        f"f.yaml:1:1: error: this document expands to more than {MAX_NODES} values through its aliases (*name) of "
        "anchors (&name); the rest of the file was not read: write the repeated parts out, or alias less"
    ]
    assert not result.complete


def test_modest_aliases_expand():
    result = read("base: &b {x: 1, y: [1, 2]}\ncopy: *b\nmerged:\n  <<: *b\n  x: 2\n")
    assert result.diagnostics == ()
    (doc,) = result.documents
    assert doc.data == {"base": {"x": 1, "y": [1, 2]}, "copy": {"x": 1, "y": [1, 2]}, "merged": {"x": 2, "y": [1, 2]}}
    # A key written in the mapping keeps its own position, not the merged one's.
    assert doc.positions.value(("merged", "x")).line == 5


def test_recursive_alias_is_refused():
    assert messages("a: &a [*a]\n") == [
        "f.yaml:1:4: error: an alias is used inside the anchor it refers to: this never ends"
    ]


def test_duplicate_keys_are_errors_pointing_at_the_second():
    result = read("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert [str(d) for d in result.diagnostics] == [
        "f.yaml:4:3: error: `c` appears twice in this mapping (first at line 3); remove one of them"
    ]
    assert result.documents[0].data == {"a": 1, "b": {"c": 1}}


def test_python_tags_construct_nothing(tmp_path):
    marker = tmp_path / "pwned"
    text = f"a: !!python/object/apply:os.system ['touch {marker}']\nb: !!python/name:os.system\nc: !custom 3\n"
    result = read(text)
    assert not marker.exists()
    assert [str(d) for d in result.diagnostics] == [
        "f.yaml:1:4: error: the tag `!!python/object/apply:os.system` is not allowed: specs use plain YAML only "
        "(strings, numbers, booleans, null, mappings and lists); remove the tag",
        "f.yaml:2:4: error: the tag `!!python/name:os.system` is not allowed: specs use plain YAML only "
        "(strings, numbers, booleans, null, mappings and lists); remove the tag",
        "f.yaml:3:4: error: the tag `!custom` is not allowed: specs use plain YAML only "
        "(strings, numbers, booleans, null, mappings and lists); remove the tag",
    ]
    data = result.documents[0].data
    assert all(isinstance(v, (str, list)) for v in data.values())


def test_core_scalars():
    (doc,) = read("a: 0x1F\nb: 1_000\nc: -.inf\nd: 1.5\ne: true\nf: ~\ng: yes\nh: 2024-01-01\ni: !!str 5\n").documents
    assert doc.data == {
        "a": 31,
        "b": 1000,
        "c": float("-inf"),
        "d": 1.5,
        "e": True,
        "f": None,
        "g": "yes",  # YAML 1.2: no Norway problem
        "h": "2024-01-01",  # timestamps stay text: no datetime objects
        "i": "5",
    }


def test_positions_are_one_based_and_point_at_keys_and_values():
    (doc,) = read("a:\n  bb: [1, {c: d}]\n").documents
    assert doc.positions.key(("a", "bb")) == Position(2, 3)
    assert doc.positions.value(("a", "bb")) == Position(2, 7)
    assert doc.positions.value(("a", "bb", 1, "c")) == Position(2, 15)
    # An absent value falls back to its nearest written ancestor.
    assert doc.positions.value(("a", "bb", 1, "missing")) == Position(2, 11)


def test_documents_keep_their_index_and_empty_ones_are_skipped():
    result = read("a: 1\n---\n---\n# only a comment\n---\nb: 2\n")
    assert [(d.index, d.data) for d in result.documents] == [(0, {"a": 1}), (3, {"b": 2})]


def test_non_utf8_bytes():
    assert messages(b"a: 1\nb: caf\xe9\n") == ["f.yaml:2:7: error: byte 0xe9 is not UTF-8: save the file as UTF-8 text"]


def test_a_bom_is_fine():
    assert read("\ufeffa: 1\n").documents[0].data == {"a": 1}


def test_control_characters():
    assert messages("a: 1\nb: x\x07\n") == [
        "f.yaml:2:5: error: the control character U+0007 is not allowed in YAML: remove it"
    ]


def test_tabs_in_indentation():
    assert messages("a:\n\tb: 1\n") == ["f.yaml:2:1: error: a tab character cannot indent YAML: indent with spaces"]


def test_syntax_error_keeps_the_documents_before_it():
    result = read("a: 1\n---\nb: [1, 2\nc: 3\n")
    assert [d.data for d in result.documents] == [{"a": 1}]
    assert [str(d) for d in result.diagnostics] == [
        "f.yaml:4:2: error: this is not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence)"
    ]
    assert not result.complete


def test_file_size_limit():
    result = read(b"a: " + b"x" * MAX_FILE_BYTES)
    assert [str(d) for d in result.diagnostics] == [
        "f.yaml:1:1: error: the file is 1 MiB; spec files are limited to 1 MiB: split it into several files"
    ]


def test_deep_nesting_fails_fast():
    for text in ("[" * 100_000, "".join(" " * i + "a:\n" for i in range(200))):
        start = time.perf_counter()
        diagnostics = read(text).diagnostics
        assert time.perf_counter() - start < 0.5
        assert len(diagnostics) == 1
        assert f"nests deeper than {MAX_DEPTH} levels" in diagnostics[0].message


def test_brackets_in_quotes_and_comments_do_not_count_as_nesting():
    text = "a: '" + "[" * 100 + "'\nb: \"" + "{" * 100 + "\" # " + "[" * 100 + "\n"
    assert read(text).diagnostics == ()


def test_complex_keys_are_refused():
    assert messages("? [a, b]\n: 1\n") == ["f.yaml:1:3: error: a mapping key must be plain text, not a list or mapping"]

"""Reading spec files: bytes to plain data, remembering where every key and value was written.

ruamel.yaml composes the node graph (its composer never expands aliases, so an alias bomb composes instantly); this
module then turns nodes into plain dicts, lists and scalars itself, counting every node it produces. That keeps five
promises: nothing in a spec constructs a Python object (only the YAML core types exist), duplicate keys are refused,
a file that writes more values than any spec needs is refused before it is composed, an alias bomb stops at a node
budget instead of exhausting memory, and each value keeps its line and column for diagnostics. Every problem becomes
a diagnostic; nothing here raises on bad input.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.quantity import format_bytes
from reconciler.spec.diagnostics import FILE_START, Diagnostic, Position, error

MAX_FILE_BYTES = 1 << 20
# Values one file may write. Real spec files write a few hundred; reading costs a few microseconds per value with
# ruamel's C parser (ruamel.yaml.clib) and ten times that without, so this bounds any file's read to a fraction of a
# second. Counted on the event stream before anything is composed: 500,000 integers in one list stop here, early.
MAX_WRITTEN = 20_000
# Nodes one file may expand to through aliases. A nested-alias bomb reaches this in milliseconds.
MAX_NODES = 100_000
MAX_DEPTH = 64

Path = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _MAP, _SEQ, _MERGE = (_CORE + t for t in ("timestamp", "map", "seq", "merge"))
_ALLOWED_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _MAP, _SEQ, _MERGE, "!"}

# YAML's printable set; anything else (NUL, escape sequences, lone surrogates) is refused before parsing.
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Positions:
    """Where each value (and each mapping key) of one document was written, by its path from the document root."""

    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)

    def value(self, path: Path) -> Position:
        """The value's position, or its nearest written ancestor's (a defaulted field has no position)."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return FILE_START

    def key(self, path: Path) -> Position:
        """The key's position where the value sits in a mapping, else the value's."""
        for end in range(len(path), -1, -1):
            found = self.keys.get(path[:end]) or self.values.get(path[:end])
            if found is not None:
                return found
        return FILE_START


@dataclass(frozen=True, slots=True)
class SourceDocument:
    path: str
    index: int  # 0-based position of the document in its file
    data: Any
    positions: Positions

    @property
    def start(self) -> Position:
        return self.positions.value(())


class _Budget(Exception):
    """The node budget ran out: the document expands (through aliases) beyond anything a spec needs."""


class _TooDeep(Exception):
    pass


class _Cycle(Exception):
    """An alias used inside the node it refers to: the document would be infinite."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node


def _tag(node: Node) -> str:
    """The node's tag as text. ruamel's ``Node.tag`` decodes the tag anew for every node (a tenth of the reading
    time of a large file); a resolved tag without a handle or %-escape is its own text."""
    ctag = getattr(node, "ctag", None)
    if ctag is not None and ctag.handle is None and isinstance(ctag.suffix, str) and "%" not in ctag.suffix:
        return ctag.suffix
    tag = node.tag
    return tag if isinstance(tag, str) else str(tag)


def _position(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _offset_position(text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    return Position(line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def _core_int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    bases = {"0x": 16, "0o": 8, "0b": 2}
    base = bases.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _core_float(text: str) -> float:
    lowered = text.replace("_", "").lower()
    specials = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}
    return float(specials.get(lowered, lowered))


class _Converter:
    """Nodes to plain data for one file; the node budget is shared by all its documents."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.produced = 0
        self.diagnostics: list[Diagnostic] = []

    def document(self, root: Node, index: int) -> SourceDocument:
        positions = Positions()
        data = self._node(root, (), positions, 0)
        return SourceDocument(path=self.path, index=index, data=data, positions=positions)

    def _node(self, node: Node, path: Path, positions: Positions, depth: int) -> Any:
        self.produced += 1
        if self.produced > MAX_NODES:
            raise _Budget
        if depth > MAX_DEPTH:
            raise _TooDeep
        positions.values[path] = _position(node)
        tag = _tag(node)
        if tag not in _ALLOWED_TAGS:
            self.diagnostics.append(
                error(
                    self.path,
                    _position(node),
                    f"the tag `{tag.replace(_CORE, '!!')}` is not allowed: specs use plain YAML only "
                    "(strings, numbers, booleans, null, mappings and lists); remove the tag",
                )
            )
        if isinstance(node, MappingNode):
            return self._mapping(node, path, positions, depth)
        if isinstance(node, SequenceNode):
            return [self._node(item, (*path, i), positions, depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, tag)

    def _scalar(self, node: ScalarNode, tag: str) -> Any:
        # Only the core types are ever constructed; any other tag (already reported) reads as its text.
        try:
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return node.value.lower() == "true"
            if tag == _INT:
                return _core_int(node.value)
            if tag == _FLOAT:
                return _core_float(node.value)
        except ValueError:
            pass
        return node.value

    def _mapping(self, node: MappingNode, path: Path, positions: Positions, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and _tag(key_node) == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self.diagnostics.append(
                    error(self.path, _position(key_node), "a mapping key must be plain text, not a list or mapping")
                )
                continue
            key = str(key_node.value)
            if key in result:
                first = positions.keys[(*path, key)]
                self.diagnostics.append(
                    error(
                        self.path,
                        _position(key_node),
                        f"`{key}` appears twice in this mapping (first at line {first.line}); remove one of them",
                    )
                )
                continue
            positions.keys[(*path, key)] = _position(key_node)
            result[key] = self._node(value_node, (*path, key), positions, depth + 1)
        for merge in merges:
            # `<<: *defaults` (or a list of them): keys written in this mapping win over merged ones.
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.diagnostics.append(
                        error(self.path, _position(source), "`<<` merges mappings only: give it an alias of one")
                    )
                    continue
                merged_positions = Positions()
                merged = self._mapping(source, path, merged_positions, depth)
                for key, value in merged.items():
                    result.setdefault(key, value)
                for at, position in merged_positions.values.items():
                    positions.values.setdefault(at, position)
                for at, position in merged_positions.keys.items():
                    positions.keys.setdefault(at, position)
        return result


def too_large(path: str, size: int) -> Diagnostic | None:
    if size <= MAX_FILE_BYTES:
        return None
    return error(
        path,
        FILE_START,
        f"the file is {format_bytes(size)}; spec files are limited to {format_bytes(MAX_FILE_BYTES)}: "
        "split it into several files",
    )


def _decode(path: str, content: bytes) -> tuple[str | None, Diagnostic | None]:
    big = too_large(path, len(content))
    if big is not None:
        return None, big
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        col = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, error(
            path,
            Position(line, col),
            f"byte 0x{content[exc.start]:02x} is not UTF-8: save the file as UTF-8 text",
        )
    text = text.removeprefix("\ufeff")
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        return None, error(
            path,
            _offset_position(text, bad.start()),
            f"the control character U+{ord(bad.group()):04X} is not allowed in YAML: remove it",
        )
    return text, None


def _yaml_error(path: str, text: str, exc: MarkedYAMLError) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    at = Position(mark.line + 1, mark.column + 1) if mark is not None else FILE_START
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
        return error(path, at, "a tab character cannot indent YAML: indent with spaces")
    problem = (exc.problem or exc.context or "malformed YAML").rstrip(".")
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    return error(path, at, f"this is not valid YAML: {problem}{context}")


def _flow_too_deep(text: str) -> int | None:
    """The offset of the first bracket nesting deeper than MAX_DEPTH, skipping quoted text and comments.

    ruamel's scanner looks ahead to the end of every open flow collection, which is quadratic in the nesting, so
    `[[[[...` is caught on the raw text. Brackets inside block scalars count too: no real spec opens 64 of them.
    """
    depth = 0
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"" and (i == 0 or text[i - 1] in " \t\n[{,:"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n"):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return i
        elif char in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _yaml(*, pure: bool = False) -> YAML:
    # ruamel picks its C parser (ruamel.yaml.clib) when installed; the pure one reads the same, ten times slower, and
    # says more about a syntax error (what it found where it expected something else).
    return YAML(typ="safe", pure=pure)


def _too_big(text: str) -> tuple[Position, str] | None:
    """Where the text first nests deeper than MAX_DEPTH or writes more than MAX_WRITTEN values, and which.

    Both are checked on the lazy event stream, which stops at the first offence: before ruamel's recursive composer
    could exhaust the stack, and before composing a huge file costs seconds.
    """
    offset = _flow_too_deep(text)
    if offset is not None:
        return _offset_position(text, offset), f"the YAML nests deeper than {MAX_DEPTH} levels; flatten it"
    depth = 0
    written = 0
    try:
        for event in _yaml().parse(text):
            if isinstance(event, (CollectionStartEvent, ScalarEvent, AliasEvent)):
                written += 1
                if written > MAX_WRITTEN:
                    return _mark(event), (
                        f"the file writes more than {MAX_WRITTEN} values (spec files write a few hundred), and is "
                        "refused before reading it further: split it into several files, or move the data that "
                        "is not a spec out of it")
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return _mark(event), f"the YAML nests deeper than {MAX_DEPTH} levels; flatten it"
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
    except YAMLError:
        pass  # reported, with the documents before it, by the composing pass
    return None


def _mark(event: Any) -> Position:
    return Position(event.start_mark.line + 1, event.start_mark.column + 1)


def _expanded_size(node: Node, sizes: dict[int, int], active: set[int]) -> int:
    """How many values the node becomes once every alias is expanded, computed once per distinct node.

    Aliases share node objects, so the memo makes this linear in the file while the expansion may be exponential.
    """
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in active:
        raise _Cycle(node)
    active.add(id(node))
    size = 1
    if isinstance(node, MappingNode):
        size += sum(_expanded_size(k, sizes, active) + _expanded_size(v, sizes, active) for k, v in node.value)
    elif isinstance(node, SequenceNode):
        size += sum(_expanded_size(item, sizes, active) for item in node.value)
    active.discard(id(node))
    sizes[id(node)] = size
    return size


def _compose(text: str, *, pure: bool) -> Iterator[Node]:
    yaml = _yaml(pure=pure)
    with warnings.catch_warnings():
        # Redefining an anchor is legal YAML; ruamel only warns about it.
        warnings.simplefilter("ignore")
        yield from yaml.compose_all(text)


@dataclass(frozen=True, slots=True)
class FileRead:
    documents: tuple[SourceDocument, ...]
    diagnostics: tuple[Diagnostic, ...]
    complete: bool  # False when some document could not be read at all, so its names are unknown


def read_documents(path: str, content: bytes) -> FileRead:
    """The documents of one file, and every problem found reading it. Empty documents are skipped."""
    text, problem = _decode(path, content)
    if text is None:
        return FileRead((), (problem,) if problem else (), complete=False)
    big = _too_big(text)
    if big is not None:
        return FileRead((), (error(path, *big),), False)
    read = _read(path, text, pure=False)
    if read.syntax_error:
        read = _read(path, text, pure=True)  # the same documents, and the pure parser's words for the error
    return read.file


@dataclass(frozen=True, slots=True)
class _Read:
    file: FileRead
    syntax_error: bool


def _read(path: str, text: str, *, pure: bool) -> _Read:
    syntax_error = False
    complete = True
    converter = _Converter(path)
    documents: list[SourceDocument] = []
    index = 0
    nodes = _compose(text, pure=pure)
    while True:
        try:
            node = next(nodes)
        except StopIteration:
            break
        except MarkedYAMLError as exc:
            converter.diagnostics.append(_yaml_error(path, text, exc))
            syntax_error = True
            complete = False
            break
        except (YAMLError, RecursionError) as exc:
            syntax_error = True
            complete = False
            message = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
            converter.diagnostics.append(error(path, FILE_START, f"this is not valid YAML: {message}"))
            break
        if node is None:
            continue
        try:
            if _expanded_size(node, {}, set()) + converter.produced > MAX_NODES:
                raise _Budget
            document = converter.document(node, index)
        except _Cycle as exc:
            complete = False
            converter.diagnostics.append(
                error(path, _position(exc.node), "an alias is used inside the anchor it refers to: this never ends")
            )
        except _Budget:
            complete = False
            converter.diagnostics.append(
                error(
                    path,
                    _position(node),
                    f"this document expands to more than {MAX_NODES} values through its aliases (*name) of "
                    "anchors (&name); the rest of the file was not read: write the repeated parts out, or alias "
                    "less",
                )
            )
            break
        except _TooDeep:
            complete = False
            converter.diagnostics.append(
                error(path, _position(node), f"this document nests deeper than {MAX_DEPTH} levels; flatten it")
            )
        else:
            if document.data is not None:
                documents.append(document)
        index += 1
    # An aliased node is converted once per use: report each of its problems once.
    return _Read(FileRead(tuple(documents), tuple(dict.fromkeys(converter.diagnostics)), complete), syntax_error)

"""Loading a spec directory: every file read, every document checked, every mistake reported in one run."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.desired import DesiredState
from reconciler.spec.build import build
from reconciler.spec.diagnostics import NOWHERE, Diagnostic, Severity, error
from reconciler.spec.fields import describe, suggestion
from reconciler.spec.messages import translate
from reconciler.spec.models import API_VERSION, DOCUMENTS
from reconciler.spec.parsed import Parsed
from reconciler.spec.rules import KINDS, Catalog, Reference, check
from reconciler.spec.sizes import size_models
from reconciler.spec.workdirs import check_working_dirs
from reconciler.spec.source import SourceDocument, read_documents, too_large

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class LoadResult:
    desired: DesiredState | None  # None when there is any error
    diagnostics: tuple[Diagnostic, ...]  # sorted by path, line, column
    files: tuple[str, ...] = ()  # the spec files read, relative to the directory
    documents: int = 0  # non-empty YAML documents found
    unsized: tuple[tuple[str, str], ...] = ()  # (model, what was tried) for vLLM models whose files can't be read

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors


def _header(doc: SourceDocument) -> tuple[str | None, list[Diagnostic]]:
    """The document's kind if apiVersion and kind are right, and what is wrong with them otherwise."""
    data = doc.data
    problems: list[Diagnostic] = []
    if not isinstance(data, dict):
        problems.append(
            error(doc.path, doc.start, f"a document must be a mapping with apiVersion, kind, metadata and spec, "
                  f"not {describe(data)}")
        )
        return None, problems
    api = data.get("apiVersion")
    where = doc.positions.value(("apiVersion",))
    if "apiVersion" not in data:
        problems.append(error(doc.path, doc.start, f"the document needs `apiVersion: {API_VERSION}`"))
    elif api != API_VERSION:
        problems.append(error(doc.path, where, f"apiVersion {describe(api)} is not supported: write {API_VERSION}"))
    kind = data.get("kind")
    if "kind" not in data:
        problems.append(error(doc.path, doc.start, f"the document needs `kind`: one of {', '.join(KINDS)}"))
        return None, problems
    if not isinstance(kind, str) or kind not in DOCUMENTS:
        close = suggestion(kind, KINDS) if isinstance(kind, str) else None
        hint = f"did you mean `{close}`?" if close else f"use one of {', '.join(KINDS)}"
        problems.append(
            error(doc.path, doc.positions.value(("kind",)), f"kind {describe(kind)} is unknown; {hint}")
        )
        return None, problems
    return kind, problems


def _name(data: Any) -> str | None:
    metadata = data.get("metadata") if isinstance(data, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _references(doc: SourceDocument) -> list[Reference]:
    """The pool and priority class a Model or Job names, read from the raw data so a Model with other mistakes still
    gets its references checked."""
    spec = doc.data.get("spec")
    if not isinstance(spec, dict):
        return []
    found = []
    for field_name, kind in (("pool", "ResourcePool"), ("priorityClass", "PriorityClass")):
        name = spec.get(field_name)
        if isinstance(name, str):
            found.append(Reference(kind, field_name, name, doc.path, doc.positions.value(("spec", field_name))))
    return found


def _validate(doc: SourceDocument, kind: str) -> tuple[Parsed | None, list[Diagnostic]]:
    model = DOCUMENTS[kind]
    # A wrong apiVersion is already reported; validating the rest as v1 still finds every other mistake, and keeps
    # the document's names and settings for the rules between documents.
    data = {**doc.data, "apiVersion": API_VERSION}
    try:
        document = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for detail in exc.errors():
            if detail["loc"][:1] in (("apiVersion",), ("kind",)):
                continue  # reported by _header, in better words
            problem = translate(model, detail)
            at = doc.positions.key(problem.path) if problem.at_key else doc.positions.value(problem.path)
            problems.append(error(doc.path, at, problem.message))
        return None, problems
    return Parsed(kind=kind, name=document.metadata.name, document=document, source=doc), []


def _load(files: Mapping[str, bytes], unreadable: tuple[Diagnostic, ...] = (),
          base_dir: Path | None = None, tree: Callable[[], Path] | None = None, *, capacity: bool = True) -> LoadResult:
    diagnostics: list[Diagnostic] = list(unreadable)
    parsed: list[Parsed] = []
    names: dict[str, set[str]] = {kind: set() for kind in KINDS}
    incomplete: set[str] = set(KINDS) if unreadable else set()
    references: list[Reference] = []
    documents = 0
    for path in sorted(files):
        read = read_documents(path, files[path])
        diagnostics.extend(read.diagnostics)
        if not read.complete:
            incomplete.update(KINDS)
        documents += len(read.documents)
        for doc in read.documents:
            kind, header = _header(doc)
            diagnostics.extend(header)
            if kind is None:
                # The document is probably of the kind its misspelt `kind` resembles; names of that kind are not
                # all known now.
                guess = suggestion(doc.data.get("kind"), KINDS) if isinstance(doc.data, dict) else None
                incomplete.update([guess] if isinstance(guess, str) else KINDS)
                continue
            name = _name(doc.data)
            if name is None:
                incomplete.add(kind)
            else:
                names[kind].add(name)
            if kind in ("Model", "Job"):
                references.extend(_references(doc))
            result, problems = _validate(doc, kind)
            diagnostics.extend(problems)
            if result is not None:
                parsed.append(result)
    if not files and not unreadable:
        diagnostics.append(error(".", NOWHERE, "no spec files found: write *.yaml files with the specs here"))
    elif documents == 0 and not diagnostics:
        diagnostics.append(error(".", NOWHERE, "the spec files hold no documents"))
    catalog = Catalog(
        pools=tuple(p for p in parsed if p.kind == "ResourcePool"),
        classes=tuple(p for p in parsed if p.kind == "PriorityClass"),
        models=tuple(p for p in parsed if p.kind == "Model"),
        jobs=tuple(p for p in parsed if p.kind == "Job"),
        gateways=tuple(p for p in parsed if p.kind == "Gateway"),
        names={kind: frozenset(found) for kind, found in names.items()},
        incomplete=frozenset(incomplete),
        references=tuple(references),
    )
    diagnostics.extend(check(catalog, capacity=capacity))
    if tree is not None and base_dir is None and any(doc.spec.working_dir is not None for doc in catalog.jobs):
        diagnostics.extend(check_working_dirs(catalog.jobs, base_dir=tree()))
    else:
        diagnostics.extend(check_working_dirs(catalog.jobs, base_dir=base_dir))
    # Sizing reads the models' files: only for specs that are otherwise right.
    sizes = None
    if not any(d.severity is Severity.ERROR for d in diagnostics):
        sizes = size_models(catalog.models, base_dir=base_dir)
        diagnostics.extend(sizes.diagnostics)
    ordered = tuple(sorted(set(diagnostics), key=lambda d: d.sort_key))
    has_errors = any(d.severity is Severity.ERROR for d in ordered)
    return LoadResult(
        desired=None if has_errors or sizes is None else build(catalog, sizes.estimates),
        diagnostics=ordered,
        files=tuple(sorted({*files, *(d.path for d in unreadable)})),
        documents=documents,
        unsized=tuple(sorted(sizes.unreadable.items())) if sizes is not None else (),
    )


def load_spec_files(files: Mapping[str, bytes], base_dir: Path | None = None, *,
                    tree: Callable[[], Path] | None = None) -> LoadResult:
    """Specs from contents by relative path (e.g. read from a git revision); only .yaml/.yml paths are loaded.
    ``tree``: the same files written out on disk, asked for only when a job has a workingDir to check."""
    return _load({path: content for path, content in files.items() if path.endswith(SUFFIXES)}, base_dir=base_dir,
                 tree=tree)


def _walk(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.endswith(SUFFIXES) and not name.startswith("."):
                path = Path(root) / name
                found[path.relative_to(directory).as_posix()] = path
    return found


def load_specs(directory: Path, *, capacity: bool = True) -> LoadResult:
    """Every *.yaml and *.yml file under the directory (hidden folders skipped), as one desired state. Without
    `capacity`, models their pool's inventory cannot hold are warnings (for `reconciler advise`)."""
    directory = Path(directory)
    if not directory.is_dir():
        problem = "does not exist" if not directory.exists() else "is not a directory"
        return LoadResult(
            desired=None,
            diagnostics=(error(str(directory), NOWHERE, f"the spec directory {problem}"),),
        )
    contents, unreadable = read_specs(directory)
    return load_contents(contents, unreadable, base_dir=directory, capacity=capacity)


def read_specs(directory: Path) -> tuple[dict[str, bytes], tuple[Diagnostic, ...]]:
    """The bytes of every spec file under an existing directory, by relative path, and the files that can't be read.

    With ``load_contents`` this is ``load_specs`` in two steps, for a caller that skips the parse when nothing
    changed (watch, every few seconds)."""
    contents: dict[str, bytes] = {}
    unreadable: list[Diagnostic] = []
    for relative, path in _walk(Path(directory)).items():
        try:
            # A huge file is refused by its size, without reading it into memory.
            big = too_large(relative, path.stat().st_size)
            if big is None:
                contents[relative] = path.read_bytes()
            else:
                unreadable.append(big)
        except OSError as exc:
            unreadable.append(error(relative, NOWHERE, f"cannot read the file: {exc.strerror or exc}"))
    return contents, tuple(unreadable)


def load_contents(contents: Mapping[str, bytes], unreadable: tuple[Diagnostic, ...] = (),
                  base_dir: Path | None = None, *, capacity: bool = True) -> LoadResult:
    """Specs from what ``read_specs`` returned; model sources that are relative paths are read from ``base_dir``
    (the spec directory)."""
    return _load(contents, unreadable, base_dir, capacity=capacity)

"""Spec files: YAML in, a validated desired state (or every mistake, located) out.

``load_specs(directory)`` and ``load_spec_files(files)`` are the entry points; the result carries the desired state
when there is no error, and every diagnostic of the whole directory either way.
"""

from reconciler.spec.diagnostics import Diagnostic, Severity
from reconciler.spec.loader import LoadResult, load_contents, load_spec_files, load_specs, read_specs

__all__ = ["Diagnostic", "LoadResult", "Severity", "load_contents", "load_spec_files", "load_specs", "read_specs"]

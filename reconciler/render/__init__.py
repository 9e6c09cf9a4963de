"""Renderers: pure functions from plans (and spec diffs) to strings. They compute nothing the output does not show
and decide nothing; `color` and formats are chosen by the CLI."""

"""A remote spec repository for the GitOps tests: a local bare repository and a clone that pushes to it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class SpecRepo:
    """``url`` is what watch follows (``file://``); ``push`` commits files to ``branch`` and returns the commit."""

    def __init__(self, root: Path, *, branch: str = "main") -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.branch = branch
        git(root, "init", "--quiet", "--bare", "-b", branch, str(self.bare))
        git(root, "init", "--quiet", "-b", branch, str(self.work))
        git(self.work, "config", "user.email", "ops@example.invalid")
        git(self.work, "config", "user.name", "ops")
        git(self.work, "remote", "add", "origin", self.url)

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def push(self, subject: str, files: dict[str, str | None], *, branch: str | None = None) -> str:
        """Write (or with None delete) files, commit them with ``subject`` and push the work clone's HEAD to
        ``branch`` (the default one unless named); returns the commit id."""
        branch = branch or self.branch
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", subject)
        git(self.work, "push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}")
        return git(self.work, "rev-parse", "HEAD")

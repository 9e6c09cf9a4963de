"""A branch of a remote git repository, followed through a local bare copy: fetch, read the head, read files.

Everything goes through the ``git`` command line, so any URL git accepts works (https, ssh, ``file://``, a plain
path) with the credentials and ssh configuration the user already has. Nothing is checked out: the spec files of a
revision are read straight from git's objects, the way `reconciler diff` reads them.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import TransientError, UserError


class GitError(TransientError):
    """A git command failed; fetches are retried, since a remote is often only briefly unreachable."""


@dataclass(frozen=True, slots=True)
class Revision:
    commit: str
    subject: str

    @property
    def short(self) -> str:
        return self.commit[:7]

    def __str__(self) -> str:
        return f'{self.short} "{self.subject}"'

    def to_json(self) -> dict[str, str]:
        return {"commit": self.commit, "subject": self.subject}


class GitRemote:
    """One branch of ``url``, mirrored into the bare repository ``cache`` (created when missing).

    ``branch=None`` follows the branch the remote's HEAD names (its default branch), resolved once at ``open``.
    """

    def __init__(self, url: str, *, cache: Path, branch: str | None = None, timeout: float = 120.0) -> None:
        self.url = url
        self.cache = Path(cache)
        self.branch = branch
        self.timeout = timeout

    def open(self) -> Revision:
        """Prepare the local copy and fetch the branch; a remote or branch that can't be read is a UserError."""
        if not (self.cache / "HEAD").exists():
            self.cache.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet", "--bare", what="cannot create the local copy")
        if self.branch is None:
            self.branch = self._default_branch()
        try:
            return self.fetch()
        except GitError as exc:
            raise UserError(str(exc)) from None

    def fetch(self) -> Revision:
        """Bring the branch up to date (history rewritten by a force-push included) and return its head."""
        ref = f"refs/heads/{self.branch}"
        self._git("fetch", "--quiet", "--no-tags", "--force", "--end-of-options", self.url, f"+{ref}:{ref}",
                  what=f"cannot fetch branch {self.branch!r} of {self.url}")
        return self.revision(ref)

    def revision(self, ref: str) -> Revision:
        out = self._git("log", "-1", "--format=%H%x00%s", ref, "--", what=f"cannot read {ref}").decode()
        commit, _, subject = out.strip("\n").partition("\0")
        return Revision(commit=commit, subject=subject)

    def read_tree(self, commit: str, path: str) -> dict[str, bytes] | None:
        """Every file under ``path`` at ``commit`` by its path relative to ``path``; None when ``path`` is absent."""
        prefix = path.strip("/")
        prefix = "" if prefix in ("", ".") else prefix
        if prefix and self._git("cat-file", "-t", f"{commit}:{prefix}", what="", check=False).strip() != b"tree":
            return None
        listing = self._git("ls-tree", "-r", "-z", "--full-tree", commit, "--", prefix or ".",
                            what=f"cannot list {prefix or '.'} at {commit[:7]}")
        entries = []
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, _, name = entry.partition(b"\t")
            mode, kind, sha = meta.split()
            if kind == b"blob" and mode != b"120000":  # symlinks and submodules are not spec files
                relative = name.decode()
                entries.append((relative[len(prefix) + 1:] if prefix else relative, sha.decode()))
        return dict(zip((name for name, _ in entries), self._blobs([sha for _, sha in entries]), strict=True))

    def export(self, commit: str, path: str, into: Path) -> Path:
        """The files under ``path`` at ``commit`` written below ``into``; the folder that holds ``path``'s content.
        Links are written as they are (a job's workingDir is checked for links that lead away, and refused); nothing
        is ever written through one."""
        prefix = path.strip("/")
        prefix = "" if prefix in ("", ".") else prefix
        archive = self._git("archive", "--format=tar", commit, "--", prefix or ".",
                            what=f"cannot check out {prefix or '.'} at {commit[:7]}")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into, filter="tar")
        return into / prefix if prefix else into

    def _blobs(self, shas: list[str]) -> list[bytes]:
        """All blobs through one `git cat-file --batch`, not one process per file."""
        if not shas:
            return []
        out = self._git("cat-file", "--batch", what="cannot read the spec files", stdin="\n".join(shas) + "\n")
        blobs, pos = [], 0
        for _ in shas:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split()[2])
            blobs.append(out[header_end + 1:header_end + 1 + size])
            pos = header_end + 1 + size + 1  # the content is followed by a newline
        return blobs

    def _default_branch(self) -> str:
        out = self._git("ls-remote", "--symref", "--end-of-options", self.url, "HEAD",
                        what=f"cannot read the repository {self.url}", user_error=True).decode()
        for line in out.splitlines():
            if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                return line.removeprefix("ref: refs/heads/").removesuffix("\tHEAD")
        raise UserError(f"{self.url} names no default branch: pass --branch")

    def _git(self, *args: str, what: str, check: bool = True, stdin: str | None = None,
             user_error: bool = False) -> bytes:
        # Never wait for a password on a terminal nobody watches: a remote that needs credentials fails instead.
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_DIR": str(self.cache)}
        try:
            result = subprocess.run(["git", *args], capture_output=True, check=False, env=env, timeout=self.timeout,
                                    input=stdin.encode() if stdin is not None else None)
        except FileNotFoundError:
            raise UserError("git is not installed or not on PATH; watch --git runs it") from None
        except subprocess.TimeoutExpired:
            raise GitError(f"{what}: git took longer than {self.timeout:g} s") from None
        if result.returncode != 0:
            if not check:
                return b""
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            message = f"{what}: {detail[-1]}" if detail else what
            raise UserError(message) if user_error else GitError(message)
        return result.stdout

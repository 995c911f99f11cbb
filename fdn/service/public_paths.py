"""What the API says about where files are: paths relative to the index's archive folders,
never the server's absolute ones.

A query's answer names each hit's source folder and the index (`QueryResult.to_dict`), and an
error may name a file; served as they are, they would tell any client how the server's disks are
laid out (user names, mount points). `PublicPaths` rewrites them: a source inside an archive
folder the manifest records becomes its path relative to that folder (`SYN_001`), any other
absolute path its last component, and the index its folder's name.
"""

from __future__ import annotations

from pathlib import Path, PurePath


class PublicPaths:
    """The rewriting of absolute paths in answers and messages for one open index."""

    def __init__(self, index) -> None:
        roots: set[str] = set()
        for root in index.manifest.archive_roots:
            if Path(root).is_absolute():
                roots |= {str(Path(root)), str(Path(root).resolve())}
        self.roots = sorted(roots, key=len, reverse=True)  # the longest (innermost) first
        self.index_dir = str(Path(index.index_dir))
        self.index_dirs = sorted(
            {self.index_dir, str(Path(self.index_dir).resolve())}, key=len, reverse=True
        )
        self.index_name = Path(self.index_dir).name

    def source(self, source: str | None) -> str | None:
        """A hit's source folder, relative to the archive folder that holds it."""
        if not source or not PurePath(source).is_absolute():
            return source
        for root in self.roots:
            if PurePath(source).is_relative_to(root):
                return PurePath(source).relative_to(root).as_posix() or "."
        return PurePath(source).name

    def result(self, answer: dict) -> dict:
        """A `QueryResult.to_dict()` with its index and every hit's source made public."""
        answer = {**answer, "index": self.index_name}
        answer["results"] = {
            mode: {**r, "hits": [{**h, "source": self.source(h.get("source"))} for h in r["hits"]]}
            for mode, r in answer.get("results", {}).items()
        }
        return answer

    def message(self, text: str) -> str:
        """An error message with the archive folders and the index folder left out."""
        for root in self.roots:
            text = text.replace(root.rstrip("/") + "/", "")
        for folder in self.index_dirs:
            text = text.replace(folder, self.index_name)
        for root in self.roots:  # a root named alone
            text = text.replace(root, PurePath(root).name)
        return text

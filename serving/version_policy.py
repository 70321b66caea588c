"""Which of the versions found under a base path to serve: TF Serving's
ServableVersionPolicy (latest N, all, specific)."""

from psflow.errors import InvalidArgumentError


class VersionPolicy:
    """`kind` is "latest" (the `count` highest versions), "all", or "specific" (`versions`)."""

    def __init__(self, kind="latest", count=1, versions=()):
        if kind not in ("latest", "all", "specific"):
            raise InvalidArgumentError(f"unknown version policy '{kind}'")
        if kind == "latest" and count < 1:
            raise InvalidArgumentError(f"latest policy needs num_versions >= 1, not {count}")
        if kind == "specific" and not versions:
            raise InvalidArgumentError("specific policy needs at least one version")
        self.kind = kind
        self.count = count
        self.versions = frozenset(int(v) for v in versions)

    @classmethod
    def from_proto(cls, message):
        """From a FileSystemStoragePathSourceConfig.ServableVersionPolicy (unset: latest 1)."""
        choice = message.WhichOneof("policy_choice")
        if choice == "all":
            return cls("all")
        if choice == "specific":
            return cls("specific", versions=message.specific.versions)
        if choice == "latest":
            return cls("latest", count=message.latest.num_versions or 1)
        return cls()

    def select(self, found):
        """The subset of `found` ({version: folder}) to serve."""
        if self.kind == "all":
            return dict(found)
        if self.kind == "specific":
            return {v: path for v, path in found.items() if v in self.versions}
        return {v: found[v] for v in sorted(found, reverse=True)[:self.count]}

    def __repr__(self):
        if self.kind == "latest":
            return f"latest({self.count})"
        if self.kind == "specific":
            return f"specific({sorted(self.versions)})"
        return "all"

"""File checksums, without heavy imports: the Slicer panel, the weights loader and the data fetcher share one."""

import hashlib


def sha256_of(path: str) -> str:
    """Hex SHA-256 digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""Files on this machine's disk or in S3-compatible object storage, behind one small set of functions.

A *location* is a local path or an ``s3://bucket/key`` URI. Image folders,
manifests and workspaces may be either; everything that reads or writes them
comes through here, so the rest of the app need not care which.

Credentials and the server come from the usual AWS variables, read by the
AWS libraries themselves and never logged: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (or ``AWS_PROFILE``, or an
instance role), ``AWS_REGION``, and ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for an S3-compatible server such as MinIO; an
``http://`` endpoint also needs ``AWS_ALLOW_HTTP=true``, which deltalake and
Polars read. pyarrow does not read the endpoint variables, so
:func:`filesystem` passes them on.
"""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from labelloop.errors import UserError

REMOTE_PREFIX = "s3://"

Location = str | Path
"""A local path (``Path`` or ``str``) or an ``s3://`` URI (always ``str``)."""


def is_remote(location: object) -> bool:
    return isinstance(location, str) and location.startswith(REMOTE_PREFIX)


def as_location(location: str | os.PathLike) -> Location:
    """``location`` as a URI when it is one, else as an expanded local ``Path``."""
    text = os.fspath(location)
    if text.lower().startswith(REMOTE_PREFIX):
        return REMOTE_PREFIX + text[len(REMOTE_PREFIX):].strip("/")
    if "://" in text:
        raise UserError(f"{text}: only local paths and s3:// URIs are supported.")
    return Path(text).expanduser()


def join(location: Location, *parts: str) -> Location:
    if is_remote(location):
        return posixpath.join(location, *parts)
    return Path(location).joinpath(*parts)


def name_of(location: Location) -> str:
    return posixpath.basename(location) if is_remote(location) else Path(location).name


def parent_of(location: Location) -> Location:
    if is_remote(location):
        parent = posixpath.dirname(location)
        return parent if len(parent) > len(REMOTE_PREFIX) else location
    return Path(location).parent


def bucket_of(uri: str) -> str:
    return uri[len(REMOTE_PREFIX):].split("/", 1)[0]


def endpoint() -> str | None:
    """The S3-compatible server named by the environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(location: Location):
    """(pyarrow FileSystem, path inside it) for ``location``."""
    if not is_remote(location):
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), str(location)
    return _s3(endpoint(), os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")), location[len(REMOTE_PREFIX):]


@lru_cache(maxsize=8)
def _s3(server: str | None, region: str | None):
    import pyarrow.fs as pafs

    options: dict = {"region": region} if region else {}
    if server:
        parsed = urlparse(server if "://" in server else f"https://{server}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


# --------------------------------------------------------------------------- reading and writing


def read_bytes(location: Location) -> bytes:
    if not is_remote(location):
        with open(location, "rb") as handle:
            return handle.read()
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole file so that readers see the old one or the new one, never a part.

    On a local disk: a temporary file renamed into place. In S3 a single PUT is atomic already.
    """
    if is_remote(location):
        fs, path = filesystem(location)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    target = Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def kind(location: Location) -> str:
    """'file', 'folder' or 'missing'. In S3 a folder is any prefix that some object's key starts with."""
    if not is_remote(location):
        path = Path(location)
        return "folder" if path.is_dir() else "file" if path.exists() else "missing"
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    found = {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(fs.get_file_info(path).type, "missing")
    # S3 answers "not found" alike for a missing key and a missing bucket; the second is the user's real problem.
    if found == "missing" and fs.get_file_info(bucket_of(location)).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"NoSuchBucket: the bucket '{bucket_of(location)}' does not exist")
    return found


def exists(location: Location) -> bool:
    return kind(location) != "missing"


def list_files(location: Location) -> tuple[list[str], list[str]]:
    """(files, folders) below a remote folder, as paths relative to it with '/' separators, sorted.

    Folder markers (empty objects whose key ends in '/', as consoles make) count as folders.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    base = path.rstrip("/") + "/"
    files, folders = [], set()
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        relative = info.path.removeprefix(base)
        if not relative:
            continue
        if info.type == pafs.FileType.Directory or (info.size == 0 and info.path.endswith("/")):
            folders.add(relative.rstrip("/"))
        else:
            files.append(relative)
            parts = relative.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(files), sorted(folders)


def list_names(location: Location) -> list[str]:
    """Names directly inside a folder (files and folders), sorted; [] when it does not exist."""
    if not is_remote(location):
        path = Path(location)
        return sorted(entry.name for entry in os.scandir(path)) if path.is_dir() else []
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/") + "/", recursive=False, allow_not_found=True))
    return sorted(posixpath.basename(info.path.rstrip("/")) for info in infos)


# --------------------------------------------------------------------------- errors


def explain(exc: BaseException, location: Location, doing: str) -> UserError:
    """A :class:`UserError` that says what went wrong with ``location`` and what to do about it.

    The AWS libraries put the bucket, key and request id in their messages, never a secret.
    """
    text = str(exc)
    lowered = text.lower()
    where = str(location)
    if is_remote(location):
        bucket = bucket_of(where)
        if "nosuchbucket" in lowered or "no_such_bucket" in lowered or "bucket does not exist" in lowered:
            return UserError(f"Could not {doing} {where}: the bucket '{bucket}' does not exist (or is in another account or region). Check the URI, or create the bucket first.")
        if "accessdenied" in lowered or "access denied" in lowered or "access_denied" in lowered or "forbidden" in lowered or " 403" in lowered:
            return UserError(
                f"Could not {doing} {where}: access was refused. Check the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE) and that they may read and write the bucket '{bucket}'."
            )
        if any(word in lowered for word in ("network_connection", "could not resolve", "connection refused", "connect error", "error sending request", "timed out", "tcp connect")):
            server = endpoint() or "AWS S3"
            return UserError(f"Could not {doing} {where}: the object store at {server} could not be reached. Check the network and AWS_ENDPOINT_URL, then try again.")
        if isinstance(exc, FileNotFoundError) or "does not exist" in lowered or "nosuchkey" in lowered:
            return UserError(f"Could not {doing} {where}: there is no such object. Check the URI.")
    first_line = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    return UserError(f"Could not {doing} {where}: {first_line}.")

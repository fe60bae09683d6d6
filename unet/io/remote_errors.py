"""Failures to reach a remote store, as the project's one-line errors that say what to set.

s3fs, botocore and aiobotocore report a missing credential, an unknown bucket, an endpoint that
does not answer and a refused permission with their own exceptions at the bottom of a long
traceback through zarr and fsspec (``NoCredentialsError: Unable to locate credentials``), and
zarr reads an unknown bucket as a missing group. Here they become errors of
:mod:`unet.errors` whose one line names the location and what to set:

- :func:`check_store` probes a location once, with one request and short timeouts, before a run
  starts (the CLI's early checks, a flow's first step, ``unet serve``'s check of a deployment);
- :func:`explain` translates such an exception wherever it is caught later.

Object stores other than S3 get the same treatment where their errors are Python's own
(``PermissionError``, ``ConnectionError``, ``TimeoutError``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from unet.errors import (
    AccessDenied,
    BucketNotFound,
    MissingCredentials,
    ServerUnreachable,
    UNetError,
)
from unet.io.locations import is_url

#: Seconds a probe waits for the store to connect and to answer.
PROBE_SECONDS = 5

#: What an S3 user sets, said in every S3 error.
S3_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"

_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")
_REFUSED_KEYS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")
_DENIED = ("AccessDenied", "AllAccessDisabled", "Forbidden", "403")
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError")


def check_store(location: str, *, writing: bool = False) -> None:
    """Raise the one-line error of a remote ``location`` that cannot be reached.

    A local path, a location that answers, and one that does not exist yet in a bucket that
    does (an output before its run) pass. One listing of the location, without retries, each
    wait at most :data:`PROBE_SECONDS`.

    Raises
    ------
    MissingCredentials: no credentials, or credentials the store does not know
    BucketNotFound: the bucket does not exist at the endpoint
    ServerUnreachable: the endpoint does not answer
    AccessDenied: the credentials may not list the location
    """
    if not is_url(location):
        return
    try:
        filesystem, path = _probe_filesystem(location)
        filesystem.ls(path, detail=False)
    except FileNotFoundError as error:
        if _bucket_missing(error):
            raise _bucket_error(location, error) from None
    except Exception as error:  # whatever the store's client raises: translated, or as it is
        translated = explain(location, error, writing=writing)
        if translated is None:
            raise
        raise translated from None


def explain(location: str, error: BaseException, *, writing: bool = False) -> UNetError | None:
    """The one-line error of ``error``, raised while reaching the remote ``location``, or None
    when it is none of: missing or refused credentials, an unknown bucket, an endpoint that does
    not answer, a refused permission. ``writing``: ``location`` is an output."""
    if isinstance(error, UNetError) or not is_url(location):
        return None
    names = {type(cause).__name__ for cause in _chain(error)}
    codes = {code for cause in _chain(error) if (code := _error_code(cause))}
    if names & set(_CREDENTIAL_ERRORS):
        return MissingCredentials(
            f"no credentials to reach {location}: set {_credentials(location)} on every machine "
            f"of the run{_endpoint_hint(location)}"
        )
    if codes & set(_REFUSED_KEYS):
        code = sorted(codes & set(_REFUSED_KEYS))[0]
        return MissingCredentials(
            f"the store at {_endpoint(location, error)} refuses the credentials for {location} "
            f"({code}): set {_credentials(location)} to a valid key of that store"
        )
    if "NoSuchBucket" in codes:
        return _bucket_error(location, error)
    if names & set(_UNREACHABLE) or any(
        isinstance(cause, ConnectionError | TimeoutError) for cause in _chain(error)
    ):
        return ServerUnreachable(
            f"the store of {location} does not answer at {_endpoint(location, error)} "
            f"({_reason(error)}): start it, or set {_endpoint_setting(location)} to where it "
            "listens"
        )
    if codes & set(_DENIED) or any(isinstance(cause, PermissionError) for cause in _chain(error)):
        access = "write" if writing else "read"
        return AccessDenied(
            f"permission denied for {location}: the credentials in use may not {access} it; "
            f"grant them {_permissions(location, writing)}, or set {_credentials(location)} to "
            "credentials that may"
        )
    return None


def _probe_filesystem(location: str) -> tuple[Any, str]:
    """A filesystem of ``location`` of its own (not the cached one the run uses), with short
    timeouts and no retries."""
    import fsspec

    protocol = urlsplit(location).scheme
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        options["config_kwargs"] = {
            "connect_timeout": PROBE_SECONDS,
            "read_timeout": PROBE_SECONDS,
            "retries": {"total_max_attempts": 1, "mode": "standard"},
        }
    filesystem, path = fsspec.core.url_to_fs(location, skip_instance_cache=True, **options)
    if hasattr(filesystem, "retries"):
        filesystem.retries = 1  # s3fs tries 5 times with back-off
    return filesystem, path


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes and contexts."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def _error_code(error: BaseException) -> str | None:
    """The error code of a botocore ``ClientError`` (``NoSuchBucket``, ``AccessDenied``)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _bucket_missing(error: BaseException) -> bool:
    return any(_error_code(cause) == "NoSuchBucket" for cause in _chain(error))


def _bucket_error(location: str, error: BaseException) -> BucketNotFound:
    bucket = urlsplit(location).netloc
    return BucketNotFound(
        f"bucket {bucket!r} of {location} does not exist at {_endpoint(location, error)}: "
        f"create it, fix the URL, or set {_endpoint_setting(location)} to the store that holds it"
    )


def _endpoint(location: str, error: BaseException | None = None) -> str:
    """The endpoint the store's client talked to, as precisely as it is known."""
    for cause in _chain(error) if error is not None else ():
        endpoint = getattr(cause, "kwargs", {}).get("endpoint_url")
        if endpoint:
            parts = urlsplit(str(endpoint))
            return f"{parts.scheme}://{parts.netloc}"
    if urlsplit(location).scheme in ("s3", "s3a"):
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL", "the default AWS S3 endpoint"
        )
    return f"{urlsplit(location).scheme}://"


def _credentials(location: str) -> str:
    return (
        S3_CREDENTIALS if urlsplit(location).scheme in ("s3", "s3a") else "the store's credentials"
    )


def _endpoint_setting(location: str) -> str:
    return "AWS_ENDPOINT_URL" if urlsplit(location).scheme in ("s3", "s3a") else "the endpoint"


def _endpoint_hint(location: str) -> str:
    if urlsplit(location).scheme not in ("s3", "s3a"):
        return ""
    return ", and AWS_ENDPOINT_URL for an S3-compatible store (MinIO, Ceph)"


def _permissions(location: str, writing: bool) -> str:
    bucket = urlsplit(location).netloc
    if urlsplit(location).scheme not in ("s3", "s3a"):
        return "read and write access" if writing else "read access"
    actions = (
        "s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject"
        if writing
        else ("s3:ListBucket and s3:GetObject")
    )
    return f"{actions} on bucket {bucket!r}"


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__

"""A remote store that cannot be reached is one line naming the URL and what to set: missing or
refused credentials, an unknown bucket, an endpoint that does not answer, a refused permission.

Against a real S3 server (moto) on 127.0.0.1, and a closed port for the endpoint that does not
answer.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import zarr
from testdata import free_port

from unet.errors import AccessDenied, BucketNotFound, MissingCredentials, ServerUnreachable
from unet.io.remote_errors import check_store, explain

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "slides"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 with the bucket ``slides`` holding ``a.zarr``, and an IAM
    user without permissions (its access key)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        _point_at(env, endpoint, "testing", "testing")
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        zarr.create_array(f"s3://{BUCKET}/a.zarr", shape=(4, 4), dtype="uint8")[...] = np.ones(
            (4, 4), np.uint8
        )
        iam = boto3.client("iam")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
    yield endpoint, (key["AccessKeyId"], key["SecretAccessKey"])
    server.stop()


def _point_at(env: pytest.MonkeyPatch, endpoint: str, key: str | None, secret: str | None):
    import s3fs

    env.setenv("AWS_ENDPOINT_URL", endpoint)
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # No credentials but these: no profile, no files, no instance metadata service.
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    env.setenv("AWS_CONFIG_FILE", "/nonexistent")
    env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env.delenv("AWS_PROFILE", raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret)):
        if value is None:
            env.delenv(name, raising=False)
        else:
            env.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def aws(s3_server, monkeypatch):
    """Configure the AWS environment: ``aws(key, secret, endpoint=None)``."""
    endpoint, _ = s3_server

    def configure(key, secret, other_endpoint=None):
        _point_at(monkeypatch, other_endpoint or endpoint, key, secret)

    return configure


def test_a_reachable_location_and_an_output_not_written_yet_pass(aws):
    aws("testing", "testing")
    check_store(f"s3://{BUCKET}/a.zarr")
    check_store(f"s3://{BUCKET}/masks/new.zarr", writing=True)
    check_store("/a/local/path")  # not probed


def test_missing_credentials_say_which_variables_to_set(aws):
    aws(None, None)
    with pytest.raises(MissingCredentials) as caught:
        check_store(f"s3://{BUCKET}/a.zarr")
    message = str(caught.value)
    assert message.startswith(f"no credentials to reach s3://{BUCKET}/a.zarr: set ")
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)" in message
    assert "AWS_ENDPOINT_URL" in message and "\n" not in message


def test_an_unknown_key_is_refused_credentials(aws):
    aws("AKIAUNKNOWN", "wrong")
    with enforced_permissions():
        with pytest.raises(
            MissingCredentials, match=r"refuses the credentials .*\(InvalidAccessKeyId\)"
        ):
            check_store(f"s3://{BUCKET}/a.zarr")


def test_an_unknown_bucket_is_named_with_the_endpoint(aws, s3_server):
    aws("testing", "testing")
    with pytest.raises(BucketNotFound) as caught:
        check_store("s3://no-such-bucket/slide.zarr", writing=True)
    assert str(caught.value) == (
        f"bucket 'no-such-bucket' of s3://no-such-bucket/slide.zarr does not exist at "
        f"{s3_server[0]}: create it, fix the URL, or set AWS_ENDPOINT_URL to the store that "
        "holds it"
    )


def test_an_endpoint_that_does_not_answer_is_named_at_once(aws):
    closed = f"http://127.0.0.1:{free_port()}"
    aws("testing", "testing", closed)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as caught:
        check_store(f"s3://{BUCKET}/a.zarr")
    assert time.monotonic() - started < 2  # one attempt, not s3fs's five with back-off
    message = str(caught.value)
    assert message.startswith(f"the store of s3://{BUCKET}/a.zarr does not answer at {closed} (")
    assert message.endswith("start it, or set AWS_ENDPOINT_URL to where it listens")


def test_permission_denied_says_which_permissions_to_grant(aws, s3_server):
    aws(*s3_server[1])
    with enforced_permissions():
        with pytest.raises(AccessDenied) as caught:
            check_store(f"s3://{BUCKET}/a.zarr")
        with pytest.raises(AccessDenied, match="may not write it; grant them s3:ListBucket, "):
            check_store(f"s3://{BUCKET}/out.zarr", writing=True)
    assert str(caught.value) == (
        f"permission denied for s3://{BUCKET}/a.zarr: the credentials in use may not read it; "
        f"grant them s3:ListBucket and s3:GetObject on bucket '{BUCKET}', or set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to credentials that may"
    )


def test_errors_raised_later_through_zarr_are_explained(aws):
    aws(None, None)
    with pytest.raises(Exception) as caught:
        zarr.open_group(f"s3://{BUCKET}/a.zarr", mode="r")
    assert type(caught.value).__name__ == "NoCredentialsError"
    assert isinstance(explain(f"s3://{BUCKET}/a.zarr", caught.value), MissingCredentials)
    assert explain(f"s3://{BUCKET}/a.zarr", ValueError("a bug")) is None
    assert explain("/local/a.zarr", PermissionError("local")) is None


class enforced_permissions:
    """moto checks credentials and IAM permissions within this block (its setting is one of
    the whole process: restored at the end)."""

    def __enter__(self):
        self.endpoint = _endpoint()
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()

    def __exit__(self, *exc_info):
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


def _endpoint() -> str:
    import os

    return os.environ["AWS_ENDPOINT_URL"]

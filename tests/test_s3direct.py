"""The direct S3 requests' signer and addressing, checked against botocore's own (no server needed; the S3 suite
checks them against moto and a signature-verifying Ceph RGW)."""

from __future__ import annotations

import datetime
import re
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from aiojobstore.backends.s3.direct import SigV4, bucket_url_from_presigned, canonical_query, sse_headers

NOW = datetime.datetime(2026, 11, 21, 13, 5, 9, tzinfo=datetime.timezone.utc)


def botocore_signature(method: str, url: str, headers: dict[str, str], credentials: Credentials,
                       region: str) -> str:
    """botocore's SigV4 signature of a request carrying exactly ``headers`` (ours, minus Authorization)."""
    request = AWSRequest(method=method, url=url, headers=headers)
    request.context["timestamp"] = NOW.strftime("%Y%m%dT%H%M%SZ")
    auth = S3SigV4Auth(credentials, "s3", region)
    return auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


@pytest.mark.parametrize(("method", "key", "headers"), [
    ("GET", "store/plain", {}),
    ("HEAD", "store/with space/and+plus", {"if-match": '"abc"'}),
    ("PUT", "store/ünïcødé/日本 (1)~x", {"x-amz-meta-ajs-crc32c": "AAAAAA==", "if-none-match": "*",
                                       "x-amz-checksum-crc32c": "AAAAAA==", **sse_headers(bytes(range(32)))}),
    ("DELETE", "store/percent%20kept*at@", {}),
    ("GET", "store/a", {"Range": "bytes=0-99", "X-Amz-Meta-Spaced": "  two   words "}),
])
@pytest.mark.parametrize("token", [None, "session-token/with+chars=="])
def test_signature_matches_botocores(method: str, key: str, headers: dict[str, str], token: str | None) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = "/bucket/" + quote(key, safe="/~")
    signed = SigV4("eu-west-3").sign(method, "s3.example.test:9000", path, headers, access_key="AKIDEXAMPLE",
                                     secret_key=credentials.secret_key, token=token, now=NOW)
    authorization = signed.pop("authorization")
    assert signed["x-amz-date"] == "20261121T130509Z"
    assert (signed.get("x-amz-security-token") == token)
    names = re.search(r"SignedHeaders=([^,]+)", authorization).group(1).split(";")
    assert names == sorted([*signed, "host"])  # every header sent is signed, the host too
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/eu-west-3/s3/aws4_request, ")
    expected = botocore_signature(method, f"https://s3.example.test:9000{path}", signed, credentials, "eu-west-3")
    assert authorization.endswith(f"Signature={expected}")


def test_signing_key_follows_the_secret_and_the_day() -> None:
    signer = SigV4("us-east-1")
    one = signer.sign("GET", "h", "/b/k", {}, access_key="A", secret_key="s1", now=NOW)["authorization"]
    other_secret = signer.sign("GET", "h", "/b/k", {}, access_key="A", secret_key="s2", now=NOW)["authorization"]
    next_day = signer.sign("GET", "h", "/b/k", {}, access_key="A", secret_key="s1",
                           now=NOW + datetime.timedelta(days=1))["authorization"]
    again = signer.sign("GET", "h", "/b/k", {}, access_key="A", secret_key="s1", now=NOW)["authorization"]
    assert len({one, other_secret, next_day}) == 3 and again == one


def test_bucket_url_from_path_style_and_virtual_hosted_urls() -> None:
    query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261121%2Feu-west-3%2Fs3%2Faws4_request"
    assert bucket_url_from_presigned(f"http://127.0.0.1:9000/bucket/probe-key?{query}", "probe-key") == (
        "http://127.0.0.1:9000/bucket/", "eu-west-3")
    assert bucket_url_from_presigned(f"https://bucket.s3.eu-west-3.amazonaws.com/probe-key?{query}",
                                     "probe-key") == ("https://bucket.s3.eu-west-3.amazonaws.com/", "eu-west-3")
    with pytest.raises(ValueError, match="SigV4"):
        bucket_url_from_presigned("http://h/bucket/probe-key?AWSAccessKeyId=AK&Signature=x&Expires=1", "probe-key")
    with pytest.raises(ValueError, match="end with the key"):
        bucket_url_from_presigned(f"http://h/bucket/other?{query}", "probe-key")


@pytest.mark.parametrize("query", [{"partNumber": "3", "uploadId": "2~abc/def+ghi=="}, {"uploadId": "x y", "a": ""}])
def test_signature_with_a_query_string_matches_botocores(query: dict[str, str]) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    path = "/bucket/" + quote("store/part of it", safe="/~")
    canonical = canonical_query(query)
    signed = SigV4("us-east-1").sign("PUT", "127.0.0.1:7480", path, {"x-amz-checksum-crc32c": "AAAAAA=="},
                                     access_key="AKIDEXAMPLE", secret_key=credentials.secret_key, now=NOW,
                                     query=canonical)
    authorization = signed.pop("authorization")
    expected = botocore_signature("PUT", f"http://127.0.0.1:7480{path}?{canonical}", signed, credentials,
                                  "us-east-1")
    assert authorization.endswith(f"Signature={expected}")

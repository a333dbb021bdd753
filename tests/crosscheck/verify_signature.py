"""Verifies a signed request captured by the tests with implementations hookrelay did not
write: the official `standardwebhooks` package, and Python's hmac for the platforms'
documented algorithms. Reads JSON from stdin: {"scheme", "secret", "url", "headers", "body"}.
Exits 0 when the signature is valid, 1 with a reason otherwise."""

import base64
import hashlib
import hmac
import json
import sys
import urllib.parse


def main() -> int:
    case = json.load(sys.stdin)
    scheme, secret, body = case["scheme"], case["secret"], case["body"].encode()
    headers = {k.lower(): v for k, v in case["headers"].items()}
    if scheme == "standard_webhooks":
        from standardwebhooks.webhooks import Webhook

        Webhook(secret).verify(body, headers)  # raises on a bad signature or stale timestamp
        return 0
    if scheme == "github":
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return 0 if hmac.compare_digest(expected, headers["x-hub-signature-256"]) else fail("github signature")
    if scheme == "dingtalk":
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(case["url"]).query))
        string_to_sign = f"{query['timestamp']}\n{secret}".encode()
        expected = base64.b64encode(hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()).decode()
        return 0 if expected == query["sign"] else fail(f"dingtalk sign {query['sign']} != {expected}")
    if scheme == "feishu":
        fields = json.loads(body)
        string_to_sign = f"{fields['timestamp']}\n{secret}".encode()
        expected = base64.b64encode(hmac.new(string_to_sign, digestmod=hashlib.sha256).digest()).decode()
        return 0 if expected == fields["sign"] else fail(f"feishu sign {fields['sign']} != {expected}")
    return fail(f"unknown scheme {scheme}")


def fail(reason: str) -> int:
    print(reason, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Ready-to-send sample events of the AWS services that invoke Lambda functions.

Each builder returns one event in the shape the service sends (API Gateway REST and
HTTP APIs, SQS, SNS, S3 object created, EventBridge schedule, DynamoDB Streams) with
fresh ids and timestamps. The API Gateway events come from ``proxy_events``, the
builders the gateway front door uses. ``lambda-events`` prints them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from lambda_rapid.proxy_events import ApiContext, HttpRequest, event_v1, event_v2, proxy_match

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
API_ID = "1234567890"
API_HOST = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"

Event = dict[str, Any]


def _iso_time(epoch: float, millis: bool = True) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_request(method: str, path: str, body: str | None, stage: str) -> HttpRequest:
    raw_path, _, raw_query = path.partition("?")
    headers = [
        ("accept", "*/*"),
        ("host", API_HOST),
        ("user-agent", USER_AGENT),
        ("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"),
        ("X-Forwarded-For", "203.0.113.10"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Proto", "https"),
    ]
    data = (body or "").encode()
    if data:
        headers.append(("content-type", _content_type(body or "")))
        headers.append(("content-length", str(len(data))))
    return HttpRequest(
        method=method.upper(),
        raw_path=urllib.parse.quote(raw_path if raw_path.startswith("/") else "/" + raw_path),
        raw_query=raw_query,
        headers=tuple(headers),
        body=data,
        source_ip="203.0.113.10",
        stage_prefix="" if stage == "$default" else "/" + stage,
    )


def _content_type(body: str) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "text/plain"
    return "application/json"


def _api_context(stage: str) -> ApiContext:
    return ApiContext(
        request_id=str(uuid.uuid4()),
        time_epoch_ms=int(time.time() * 1000),
        api_id=API_ID,
        account_id=ACCOUNT_ID,
        stage=stage,
        domain_name=API_HOST,
    )


def apigw_v1(method: str = "GET", path: str = "/", body: str | None = None) -> Event:
    request = _http_request(method, path, body, "prod")
    return event_v1(request, proxy_match(request.raw_path), _api_context("prod"))


def apigw_v2(method: str = "GET", path: str = "/", body: str | None = None) -> Event:
    request = _http_request(method, path, body, "$default")
    return event_v2(request, proxy_match(request.raw_path), _api_context("$default"))


def sqs(body: str = "Hello from SQS!", queue: str = "my-queue") -> Event:
    now_ms = str(int(time.time() * 1000))
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "AQEB" + base64.b64encode(secrets.token_bytes(96)).decode(),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": now_ms,
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": now_ms,
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue}",
                "awsRegion": REGION,
            }
        ]
    }


def sns(body: str = "Hello from SNS!") -> Event:
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:sns-lambda"
    endpoint = f"https://sns.{REGION}.amazonaws.com"
    return {
        "Records": [
            {
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{topic}:{uuid.uuid4()}",
                "EventSource": "aws:sns",
                "Sns": {
                    "SignatureVersion": "1",
                    "Timestamp": _iso_time(time.time()),
                    "Signature": base64.b64encode(secrets.token_bytes(256)).decode(),
                    "SigningCertUrl": f"{endpoint}/SimpleNotificationService-"
                    f"{secrets.token_hex(16)}.pem",
                    "MessageId": str(uuid.uuid4()),
                    "Message": body,
                    "MessageAttributes": {},
                    "Type": "Notification",
                    "UnsubscribeUrl": f"{endpoint}/?Action=Unsubscribe&SubscriptionArn={topic}",
                    "TopicArn": topic,
                    "Subject": "TestInvoke",
                },
            }
        ]
    }


def s3_put(bucket: str = "example-bucket", key: str = "test/key.txt") -> Event:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventTime": _iso_time(time.time()),
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
                "requestParameters": {"sourceIPAddress": "203.0.113.10"},
                "responseElements": {
                    "x-amz-request-id": secrets.token_hex(8).upper(),
                    "x-amz-id-2": base64.b64encode(secrets.token_bytes(48)).decode(),
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "object-created",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        # S3 events carry the key URL-encoded, spaces as '+'.
                        "key": urllib.parse.quote_plus(key, safe="/"),
                        "size": 1024,
                        "eTag": secrets.token_hex(16),
                        "sequencer": secrets.token_hex(9).upper(),
                    },
                },
            }
        ]
    }


def schedule() -> Event:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": _iso_time(time.time(), millis=False),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/my-schedule"],
        "detail": {},
    }


def dynamodb() -> Event:
    now = time.time()
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/ExampleTable"
    return {
        "Records": [
            {
                "eventID": secrets.token_hex(16),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": REGION,
                "dynamodb": {
                    "ApproximateCreationDateTime": int(now),
                    "Keys": {"Id": {"N": "101"}},
                    "NewImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}},
                    "SequenceNumber": str(secrets.randbelow(10**20)),
                    "SizeBytes": 26,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "eventSourceARN": f"{table}/stream/{_iso_time(now)[:-1]}",
            }
        ]
    }


# Kind → (builder, the options it takes, help).
KINDS: dict[str, tuple[Callable[..., Event], tuple[str, ...], str]] = {
    "apigw-v1": (apigw_v1, ("method", "path", "body"), "API Gateway REST API proxy event"),
    "apigw-v2": (apigw_v2, ("method", "path", "body"), "HTTP API / function URL event"),
    "sqs": (sqs, ("body", "queue"), "SQS message batch of one"),
    "sns": (sns, ("body",), "SNS notification"),
    "s3-put": (s3_put, ("bucket", "key"), "S3 ObjectCreated:Put notification"),
    "schedule": (schedule, (), "EventBridge scheduled event"),
    "dynamodb": (dynamodb, (), "DynamoDB Streams INSERT record"),
}

OPTION_HELP = {
    "method": "HTTP method (default GET)",
    "path": "request path, may include ?query (default /)",
    "body": "message or request body",
    "queue": "SQS queue name (default my-queue)",
    "bucket": "S3 bucket name (default example-bucket)",
    "key": "S3 object key (default test/key.txt)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambda-events",
        description="Print a sample event for a Lambda function, ready to send to the "
        "Invoke API (e.g. lambda-events sqs --body hi | curl -d @- URL).",
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (_, options, help_text) in KINDS.items():
        sub = kinds.add_parser(kind, help=help_text, description=help_text)
        for option in options:
            sub.add_argument(f"--{option}", help=OPTION_HELP[option])
    return parser


def render(argv: Sequence[str]) -> str:
    """The event `argv` asks for, as JSON text."""
    args = vars(build_parser().parse_args(list(argv)))
    builder, options, _ = KINDS[args["kind"]]
    given = {name: args[name] for name in options if args.get(name) is not None}
    return json.dumps(builder(**given), indent=2)


def main(argv: Sequence[str] | None = None) -> None:
    """The `lambda-events` console script."""
    event = render(sys.argv[1:] if argv is None else argv)
    try:
        print(event, flush=True)
    except BrokenPipeError:
        # The reader (e.g. `head`) left early; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

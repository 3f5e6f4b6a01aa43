"""A web function behind the gateway: the first path segment picks the response.

Works with both event formats (1.0 `path`, 2.0 `rawPath` without the stage):
  /status/<code>     that status code, a text body
  /redirect          302 with Location: /target
  /multi             one header with two values (1.0 multiValueHeaders, 2.0 comma-joined)
  /cookies           two cookies (1.0 Set-Cookie in multiValueHeaders, 2.0 `cookies`)
  /binary            PNG bytes, base64 with isBase64Encoded
  /reflect           the request body and content type sent back, base64
  /infer/<kind>      a result without statusCode: string, object, list, number
  /malformed/<kind>  no-status, not-object, body-object, bad-status, bad-base64, bad-header
  /raise             raises
  /sleep/<seconds>   sleeps, then answers
  anything else      200 with the event as a JSON body
"""

import base64
import json
import time

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06"

MALFORMED = {
    "no-status": {"body": "no status code"},
    "not-object": ["statusCode", 200],
    "body-object": {"statusCode": 200, "body": {"not": "a string"}},
    "bad-status": {"statusCode": "teapot", "body": ""},
    "bad-base64": {"statusCode": 200, "body": "***", "isBase64Encoded": True},
    "bad-header": {"statusCode": 200, "headers": {"x-bad": {"nested": 1}}, "body": ""},
}

INFERRED = {"string": "hello", "object": {"a": 1}, "list": [1, 2], "number": 42}


def request_path(event):
    if event.get("version") == "2.0":
        path = event["rawPath"]
        stage = event["requestContext"]["stage"]
        if stage != "$default" and path.startswith(f"/{stage}"):
            path = path[len(stage) + 1 :] or "/"
        return path
    return event["path"]


def request_body(event):
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def content_type(event):
    headers = event.get("headers") or {}
    return next((v for k, v in headers.items() if k.lower() == "content-type"), None)


def handler(event, context):
    v2 = event.get("version") == "2.0"
    action, _, rest = request_path(event).lstrip("/").partition("/")
    if action == "status":
        return {"statusCode": int(rest), "headers": {"content-type": "text/plain"}, "body": rest}
    if action == "redirect":
        return {"statusCode": 302, "headers": {"Location": "/target"}, "body": ""}
    if action == "multi":
        if v2:
            return {"statusCode": 200, "headers": {"x-multi": "one,two"}, "body": "multi"}
        return {
            "statusCode": 200,
            "headers": {"x-multi": "replaced", "x-single": "s"},
            "multiValueHeaders": {"x-multi": ["one", "two"]},
            "body": "multi",
        }
    if action == "cookies":
        cookies = ["a=1; Path=/", "b=2; HttpOnly"]
        if v2:
            return {"statusCode": 200, "cookies": cookies, "body": "cookies"}
        return {"statusCode": 200, "multiValueHeaders": {"Set-Cookie": cookies}, "body": "cookies"}
    if action == "binary":
        return binary(PNG, "image/png")
    if action == "reflect":
        return binary(request_body(event), content_type(event) or "application/octet-stream")
    if action == "infer":
        return INFERRED[rest]
    if action == "malformed":
        return MALFORMED[rest]
    if action == "raise":
        raise RuntimeError("the function failed")
    if action == "sleep":
        time.sleep(float(rest))
        return {"statusCode": 200, "body": "slept"}
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(event),
    }


def binary(data, media_type):
    return {
        "statusCode": 200,
        "headers": {"content-type": media_type},
        "body": base64.b64encode(data).decode(),
        "isBase64Encoded": True,
    }

"""A minimal Lambda runtime for benchmarks: a tight keep-alive next/response loop."""

import http.client
import os


def main() -> None:
    host, _, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port))
    prefix = "/2018-06-01/runtime/invocation/"
    while True:
        conn.request("GET", prefix + "next")
        response = conn.getresponse()
        event = response.read()
        request_id = response.getheader("Lambda-Runtime-Aws-Request-Id")
        conn.request("POST", f"{prefix}{request_id}/response", body=event)
        conn.getresponse().read()


if __name__ == "__main__":
    main()

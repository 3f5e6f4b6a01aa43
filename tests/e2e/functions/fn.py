"""A test function whose behaviour is chosen by its event (a JSON object).

Keys: sleep (seconds), raise (message), exit (status), print (text to stdout),
stderr (text to stderr), size (bytes of response), context (return the context),
env (return the environment), pid (return the process id); otherwise the event is echoed.
"""

import os
import sys
import time

COLD = True


def handler(event, context):
    global COLD
    cold, COLD = COLD, False
    if not isinstance(event, dict):
        return event
    if "print" in event:
        print(event["print"], flush=True)
    if "stderr" in event:
        print(event["stderr"], file=sys.stderr, flush=True)
    if "sleep" in event:
        time.sleep(event["sleep"])
    if "raise" in event:
        raise ValueError(event["raise"])
    if "exit" in event:
        sys.stdout.flush()
        os._exit(event["exit"])
    if "size" in event:
        return "x" * event["size"]
    if "context" in event:
        identity = context.identity
        client = context.client_context
        return {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "client_context": None
            if client is None
            else {
                "custom": client.custom,
                "env": client.env,
                "client": None
                if client.client is None
                else {
                    "installation_id": client.client.installation_id,
                    "app_title": client.client.app_title,
                },
            },
            "cognito_identity_id": identity.cognito_identity_id if identity else None,
            "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
            "tenant_id": getattr(context, "tenant_id", None),
            "cold": cold,
        }
    if "env" in event:
        return dict(os.environ)
    if "pid" in event:
        return {"pid": os.getpid(), "cold": cold}
    return event

#!/bin/sh
# Runs the echo function with the invoke-logger extension: invoke it with
#   curl -d '{"hello":"world"}' http://127.0.0.1:8080/2015-03-31/functions/function/invocations
# and watch the extension's lines next to the function's; Ctrl-C shows its SHUTDOWN event.
here="$(cd "$(dirname "$0")" && pwd)"
exec env LAMBDA_EXTENSIONS_DIR="$here/opt/extensions" PRINT_REPORTS=true \
  "${DAEMON:-lambda-runtime-api-daemon}" python -m awslambdaric echo.handler

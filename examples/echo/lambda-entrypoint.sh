#!/bin/sh
# Container entrypoint for a Python Lambda function image.
#
# Inside AWS Lambda, AWS_LAMBDA_RUNTIME_API is set and the runtime interface
# client is started directly. Anywhere else the runtime API daemon is started
# first and it runs the runtime interface client as its child.
#
# LAMBDA_DAEMON (default /usr/local/bin/aws-lambda-rie) and PYTHON (default
# python3) can be overridden so that both branches can be exercised without
# a container. LAMBDA_DAEMON is split into words on purpose, so it may carry
# arguments (e.g. "python3 -m lambda_rapid").

if [ $# -ne 1 ]; then
  echo "entrypoint requires the handler name to be the first argument" 1>&2
  exit 142
fi

if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  exec ${LAMBDA_DAEMON:-/usr/local/bin/aws-lambda-rie} "${PYTHON:-python3}" -m awslambdaric "$1"
else
  exec "${PYTHON:-python3}" -m awslambdaric "$1"
fi

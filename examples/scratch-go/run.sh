#!/bin/sh
# Run the scratch image with the single executable bind-mounted as aws-lambda-rie.
# A scratch image has no /tmp, where the executable unpacks itself: --tmpfs gives one.
# Build it first: ./packaging/build-executables.sh (writes dist/lambda-runtime-api-daemon).
set -eu
cd "$(dirname "$0")/../.."
exec docker run --rm \
    -u "$(id -u):$(id -g)" \
    -p 8080:8080 \
    --tmpfs /tmp \
    -v "$PWD/dist/lambda-runtime-api-daemon:/usr/local/bin/aws-lambda-rie:ro" \
    -e AWS_LAMBDA_FUNCTION_NAME=echo \
    --entrypoint /usr/local/bin/aws-lambda-rie \
    echo-scratch /echo

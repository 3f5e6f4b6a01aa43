#!/bin/bash
# A bash + curl custom runtime that streams its responses.
#
# Each response is posted with `Lambda-Runtime-Function-Response-Mode: streaming` and
# chunked encoding; curl uploads its stdin, a fifo that a background writer fills piece
# by piece, so each piece leaves as it is written. The event (or, behind the gateway,
# the proxy event's body) says what to send:
#   chunks  strings, written one after another (default ["hello ", "world"])
#   gate    a path: after the first piece, wait until this file exists
#   http    a Function URL prelude object, sent first with the eight NUL separator and
#           the http-integration-response content type

set -euo pipefail

API="http://${AWS_LAMBDA_RUNTIME_API:?}/2018-06-01/runtime"
WORKDIR="$(mktemp -d)"
WRITER=""
cleanup() {
  if [[ -n "$WRITER" ]]; then kill "$WRITER" 2> /dev/null || true; fi
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 143' TERM

instructions() {
  local event="$1"
  if jq -e 'type == "object" and has("requestContext")' <<< "$event" > /dev/null; then
    if [[ "$(jq -r '.isBase64Encoded' <<< "$event")" == "true" ]]; then
      jq -r '.body // "{}"' <<< "$event" | base64 -d
    else
      jq -r '.body // "{}"' <<< "$event"
    fi
  else
    printf '%s' "$event"
  fi
}

write_pieces() {
  local event="$1" gate first=1 count index
  gate="$(jq -r '.gate // empty' <<< "$event")"
  if jq -e 'has("http")' <<< "$event" > /dev/null; then
    jq -cj '.http' <<< "$event"
    printf '\0\0\0\0\0\0\0\0'
  fi
  count="$(jq '(.chunks // ["hello ", "world"]) | length' <<< "$event")"
  for ((index = 0; index < count; index++)); do
    jq -j --argjson i "$index" '(.chunks // ["hello ", "world"])[$i]' <<< "$event"
    if [[ -n "$first" && -n "$gate" ]]; then
      while [[ ! -e "$gate" ]]; do sleep 0.01; done
    fi
    first=""
  done
}

respond() {
  local request_id="$1" event="$2" content_type="application/octet-stream"
  if jq -e 'has("http")' <<< "$event" > /dev/null; then
    content_type="application/vnd.awslambda.http-integration-response"
  fi
  local fifo="$WORKDIR/body"
  rm -f "$fifo"
  mkfifo "$fifo"
  write_pieces "$event" > "$fifo" &
  WRITER=$!
  curl -sS -X POST -T - "$API/invocation/$request_id/response" \
    -H 'Transfer-Encoding: chunked' \
    -H 'Lambda-Runtime-Function-Response-Mode: streaming' \
    -H "Content-Type: $content_type" \
    -H 'Expect:' < "$fifo" > /dev/null
  wait "$WRITER" || true
  WRITER=""
}

while true; do
  HEADERS="$WORKDIR/headers"
  EVENT="$(curl -sS -D "$HEADERS" "$API/invocation/next")"
  REQUEST_ID="$(grep -i '^lambda-runtime-aws-request-id:' "$HEADERS" | cut -d: -f2 | tr -d '[:space:]')"
  respond "$REQUEST_ID" "$(instructions "$EVENT")"
done

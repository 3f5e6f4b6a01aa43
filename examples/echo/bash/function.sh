# Echo handler for the bash custom runtime: the event arrives as $1 and
# whatever is written to stdout becomes the response.
handler() {
  echo "handling request" >&2
  printf '%s' "$1"
}

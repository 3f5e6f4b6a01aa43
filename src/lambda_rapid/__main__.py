"""`python -m lambda_rapid`: the same as the `lambda-runtime-api-daemon` command."""

from lambda_rapid.cli import daemon_main

if __name__ == "__main__":
    daemon_main()

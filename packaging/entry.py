"""Entry point of the single executable: its file name picks the program.

Named `lambda-server` it is the Lambda Server; under any other name (the usual ones are
`lambda-runtime-api-daemon` and `aws-lambda-rie`) it is the daemon.
"""

from lambda_rapid.cli import frozen_main

frozen_main()

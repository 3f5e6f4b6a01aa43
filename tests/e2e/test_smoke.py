"""The first thing a user does: start the daemon and invoke the echo function."""


def test_echo_roundtrip(fn_daemon):
    response = fn_daemon.invoke({"key": "value"})
    assert response.status == 200
    assert response.json() == {"key": "value"}
    assert response.header("X-Amz-Executed-Version") == "$LATEST"
    assert fn_daemon.stop() == 0

"""A REST call to a psflow-serve process on this host, as the serving tests make it."""

import json
import urllib.error
import urllib.request


def rest(port, path, body=None):
    """(HTTP status, parsed JSON answer) of a GET (no body) or a POST of `body` as JSON."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

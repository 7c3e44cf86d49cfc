"""The machine's RabbitMQ node, administered for the tests and the tools: vhosts, users and
permissions, and the exact number of messages per queue.

Administration goes through the management plugin's HTTP API on 127.0.0.1:15672 when it
answers (``.ci/run`` enables the plugin), else through ``rabbitmqctl``, which starts an
Erlang VM per call (about half a second of CPU each; seconds of wall time on a busy
machine). The message counts, which include the messages a consumer holds unacknowledged
(a passive declare does not count those), come from the same API (``GET
/api/queues/{vhost}``) or from ``rabbitmqctl list_queues``. For a quorum queue (the
services' default) both read the queue's metrics, refreshed every statistics interval
(5 s); for a classic queue rabbitmqctl asks the queue itself, so a listing in which a
queue has no statistics yet is asked of rabbitmqctl. harness.invariants pairs the counts
with a passive declare's exact ready count, and "quiet" in the tests is read from the
databases (every sent event in its consumer's inbox), which is exact.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import quote

API_URL = os.environ.get("ORDERSTACK_TEST_RABBITMQ_API", "http://127.0.0.1:15672/api")
API_USER = os.environ.get("ORDERSTACK_TEST_RABBITMQ_API_USER", "guest")
API_PASSWORD = os.environ.get("ORDERSTACK_TEST_RABBITMQ_API_PASSWORD", "guest")

_api_answers: bool | None = None  # probed once per process


class RabbitAdminError(RuntimeError):
    pass


def rabbitmqctl(*args: str, command: Sequence[str] = ("rabbitmqctl",)) -> str:
    """``rabbitmqctl -q ARGS`` (or another ``command``); its output. A non-zero exit
    raises RabbitAdminError with what it printed: a command is never taken as done
    unless it says so."""
    try:
        done = subprocess.run(
            [*command, "-q", *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RabbitAdminError(f"{' '.join(command)} {' '.join(args)}: {exc!r}") from exc
    if done.returncode != 0:
        raise RabbitAdminError(
            f"{' '.join(command)} {' '.join(args)} exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[:500]}"
        )
    return done.stdout


def _api(method: str, path: str, body: object | None = None) -> bytes:
    token = base64.b64encode(f"{API_USER}:{API_PASSWORD}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - a loopback URL of our own
        f"{API_URL}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer: bytes = response.read()
            return answer
    except urllib.error.HTTPError as exc:
        if method == "DELETE" and exc.code == 404:
            return b""  # already gone
        raise RabbitAdminError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from exc
    except OSError as exc:
        raise RabbitAdminError(f"{method} {path}: {exc!r}") from exc


def api_answers() -> bool:
    """Whether the management API answers. A yes is remembered for the process; a no is
    asked again next time (the broker may have been briefly away: a chaos run's outage)."""
    global _api_answers
    if not _api_answers:
        try:
            _api("GET", "/overview")
            _api_answers = True
        except RabbitAdminError:
            _api_answers = False
    return bool(_api_answers)


def _name(value: str) -> str:
    return quote(value, safe="")


def add_vhost(vhost: str) -> None:
    if api_answers():
        _api("PUT", f"/vhosts/{_name(vhost)}", {})
    else:
        rabbitmqctl("add_vhost", vhost)


def delete_vhost(vhost: str) -> None:
    if api_answers():
        _api("DELETE", f"/vhosts/{_name(vhost)}")
    else:
        rabbitmqctl("delete_vhost", vhost)


def add_user(user: str, password: str) -> None:
    if api_answers():
        _api("PUT", f"/users/{_name(user)}", {"password": password, "tags": ""})
    else:
        rabbitmqctl("add_user", user, password)


def delete_user(user: str) -> None:
    if api_answers():
        _api("DELETE", f"/users/{_name(user)}")
    else:
        rabbitmqctl("delete_user", user)


def set_permissions(
    vhost: str, user: str, configure: str = ".*", write: str = ".*", read: str = ".*"
) -> None:
    """Configure, write and read on the resources of ``vhost`` these regular expressions
    match (by default everything)."""
    if api_answers():
        body = {"configure": configure, "write": write, "read": read}
        _api("PUT", f"/permissions/{_name(vhost)}/{_name(user)}", body)
    else:
        rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)


def set_topic_permissions(vhost: str, user: str, exchange: str, write: str, read: str) -> None:
    """On topic exchange ``exchange`` of ``vhost``: the routing keys ``user`` may publish
    (``write``) and bind with (``read``)."""
    if api_answers():
        body = {"exchange": exchange, "write": write, "read": read}
        _api("PUT", f"/topic-permissions/{_name(vhost)}/{_name(user)}", body)
    else:
        rabbitmqctl("set_topic_permissions", "-p", vhost, user, exchange, write, read)


def import_definitions(document: object) -> None:
    """Load a definitions document (users, vhosts, permissions, topology: what
    deploy/rabbitmq/definitions.json holds) into the node, through the management API."""
    if not api_answers():
        raise RabbitAdminError("importing definitions needs the management API")
    _api("POST", "/definitions", document)


def user_tags(user: str) -> set[str]:
    """The tags of ``user`` (administrator, impersonator...), from the management API."""
    if not api_answers():
        raise RabbitAdminError("reading a user's tags needs the management API")
    tags = json.loads(_api("GET", f"/users/{_name(user)}"))["tags"]
    return set(tags if isinstance(tags, list) else str(tags).split(",")) - {""}


def connection_users(vhost: str) -> set[str]:
    """The users of the connections open on ``vhost`` now (management API; rabbitmqctl's
    ``list_connections`` otherwise)."""
    if api_answers():
        listing = json.loads(_api("GET", f"/vhosts/{_name(vhost)}/connections"))
        return {str(c["user"]) for c in listing}
    output = rabbitmqctl("list_connections", "--no-table-headers", "vhost", "user")
    pairs = (line.split("\t") for line in output.splitlines() if "\t" in line)
    return {user.strip() for name, user in pairs if name.strip() == vhost}


def close_connections(vhost: str, reason: str = "closed by the harness") -> int:
    """Close every connection open on ``vhost`` now (the broker's other vhosts untouched);
    how many. With its user's permissions cleared first, the vhost's clients cannot come
    back: the broker is gone for them alone."""
    if api_answers():
        listing = json.loads(_api("GET", f"/vhosts/{_name(vhost)}/connections"))
        for connection in listing:
            name = _name(str(connection["name"]))
            _api("DELETE", f"/connections/{name}")  # the reason is rabbitmqctl's only
        return len(listing)
    output = rabbitmqctl("list_connections", "--no-table-headers", "pid", "vhost")
    pids = [
        pid.strip()
        for pid, _, on in (line.partition("\t") for line in output.splitlines())
        if on.strip() == vhost
    ]
    for pid in pids:
        rabbitmqctl("close_connection", pid, reason)
    return len(pids)


def clear_permissions(vhost: str, user: str) -> None:
    if api_answers():
        _api("DELETE", f"/permissions/{_name(vhost)}/{_name(user)}")
    else:
        rabbitmqctl("clear_permissions", "-p", vhost, user)


def parse_queue_counts(listing: str) -> dict[str, tuple[int, int]]:
    """``list_queues name messages_ready messages_unacknowledged`` output: per queue,
    (ready, unacknowledged)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in listing.splitlines():
        if fields := line.split():
            counts[fields[0]] = (int(fields[1]), int(fields[2]))
    return counts


def parse_queue_totals(listing: str) -> dict[str, int]:
    """The same, ready and unacknowledged added up."""
    return {name: sum(pair) for name, pair in parse_queue_counts(listing).items()}


LIST_QUEUE_TOTALS = (
    "list_queues",
    "--no-table-headers",
    "name",
    "messages_ready",
    "messages_unacknowledged",
)


def parse_api_queue_counts(listing: bytes) -> dict[str, tuple[int, int]] | None:
    """``GET /api/queues/{vhost}``'s answer: per queue, (ready, unacknowledged); None
    when rabbitmqctl would count better: a classic queue (it asks the queue itself) or a
    queue not counted yet (declared since the last statistics tick)."""
    counts: dict[str, tuple[int, int]] = {}
    for queue in json.loads(listing):
        if queue.get("type") != "quorum":
            return None
        if "messages_ready" not in queue or "messages_unacknowledged" not in queue:
            return None
        counts[str(queue["name"])] = (
            int(queue["messages_ready"]),
            int(queue["messages_unacknowledged"]),
        )
    return counts


def queue_counts(vhost: str) -> dict[str, tuple[int, int]]:
    """(ready, unacknowledged) per queue of ``vhost`` on the machine's node: a quorum
    queue's from its metrics, refreshed every statistics interval (5 s by default), a
    classic queue's exact only from rabbitmqctl: pair them with a passive declare's exact
    ready count. From the management API (a loopback HTTP call) when it answers and every
    queue is a quorum queue it has counted; else from rabbitmqctl."""
    if api_answers():
        columns = "name,type,messages_ready,messages_unacknowledged"
        counts = parse_api_queue_counts(_api("GET", f"/queues/{_name(vhost)}?columns={columns}"))
        if counts is not None:
            return counts
    return parse_queue_counts(rabbitmqctl(*LIST_QUEUE_TOTALS, "-p", vhost))


def queue_totals(vhost: str) -> dict[str, int]:
    """queue_counts, ready and unacknowledged added up."""
    return {name: sum(pair) for name, pair in queue_counts(vhost).items()}

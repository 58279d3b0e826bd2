"""``unirank recommend | info | health`` run in-process against the echoing test server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.client.client_echo_server import FAIL_INVALID, FAIL_UNAVAILABLE, RunningServer
from unirank.client.cli import main, print_error
from unirank.client.errors import UniRankError
from unirank.v1 import recommender_pb2 as pb

Cli = Callable[..., int]


@pytest.fixture
def recommend(server: RunningServer) -> Cli:
    """``unirank recommend --target <test server> *args``, returning the exit status."""

    def run(*args: str) -> int:
        return main(["recommend", "--target", server.target, *args])

    return run


def sent(server: RunningServer) -> pb.RecommendRequest:
    request = server.last.request
    assert isinstance(request, pb.RecommendRequest)
    return request


def test_search_prints_a_header_and_a_ranked_table(
    recommend: Cli, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = recommend(
        "search", "--query", "space", "--user", "u1", "--candidates", "a,b", "--candidates", "c",
        "--exclude", "b", "--debug",
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    request = sent(server)
    assert request.context.search.query == "space"
    assert request.context.user_id == "u1"
    assert list(request.options.candidate_item_ids) == ["a", "b", "c"]
    assert list(request.options.excluded_item_ids) == ["b"]
    assert request.options.debug
    header = "task=search  model=test-model-7  profile=test-profile  cache=miss  fallback=no"
    assert lines[0] == header
    assert lines[1].split() == ["rank", "item_id", "score", "title", "category", "source"]
    assert lines[2].split() == ["1", "a", "1.0000", "Title", "of", "a", "space", "caller"]
    assert lines[3].split() == ["2", "c", "0.5000", "Title", "of", "c", "space", "caller"]
    assert lines[4] == "timings_ms: retrieve=1.50  score=2.25"


def test_json_output_is_valid_and_complete(
    recommend: Cli, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Common flags both before and after the task name.
    status = recommend(
        "--max-results", "1", "related", "--item", "i9", "--candidates", "x,y", "--json", "--request-id", "r7"
    )
    assert status == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["task_type"] == "related_items"
    assert payload["request_id"] == "r7"
    assert payload["items"] == [
        {"item_id": "x", "score": 1.0, "title": "Title of x", "category_id": "i9", "retrieval_source": ""}
    ]
    assert (payload["fallback"], payload["fallback_reason"]) == (True, "cold_start")
    assert payload["served_from_cache"] is False
    assert sent(server).options.max_results == 1


def test_notification_and_category_build_their_tasks(
    recommend: Cli, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert recommend("notification", "--user", "u2", "--history", "h1,h2", "--country", "FR") == 0
    assert sent(server).context.WhichOneof("task") == "notification"
    assert list(sent(server).context.history_item_ids) == ["h1", "h2"]
    assert sent(server).context.country == "FR"
    assert recommend("category", "--category", "drama", "--request-id", "cached-1") == 0
    assert sent(server).context.category.category_id == "drama"
    out = capsys.readouterr().out
    assert "task=category" in out
    assert "cache=hit  fallback=cold_start (user= country=" in out
    assert "(no items)" in out


def test_new_releases_sends_the_user_and_window(
    recommend: Cli, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert recommend("new-releases", "--user", "u2", "--window-years", "4", "--history", "h1") == 0
    request = sent(server)
    assert request.context.WhichOneof("task") == "new_releases"
    assert request.context.new_releases.window_years == 4
    assert (request.context.user_id, list(request.context.history_item_ids)) == ("u2", ["h1"])
    assert "task=new_releases" in capsys.readouterr().out
    assert recommend("new-releases", "--user", "u2") == 0
    assert sent(server).context.WhichOneof("task") == "new_releases"
    assert sent(server).context.new_releases.window_years == 0


def test_timeout_flag_sets_the_deadline(recommend: Cli, server: RunningServer) -> None:
    assert recommend("--timeout", "12", "notification", "--user", "u") == 0
    remaining = server.last.time_remaining
    assert remaining is not None and 11.25 < remaining < 12.25


def test_errors_go_to_stderr_with_field_violations(
    recommend: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    status = recommend("search", "--query", "", "--request-id", FAIL_INVALID)
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "unirank: INVALID_ARGUMENT: the request is invalid",
        "  context.search.query: must not be empty",
        "  options.max_results: must be <= 100",
        "  reason: INVALID_REQUEST",
    ]


def test_retry_after_is_printed(recommend: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert recommend("notification", "--user", "u", "--request-id", FAIL_UNAVAILABLE) == 1
    err = capsys.readouterr().err
    assert "unirank: UNAVAILABLE: model not ready" in err
    assert "retry after 1.5 s" in err


def test_info_prints_the_model_and_its_tasks(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--target", server.target]) == 0
    out = capsys.readouterr().out
    assert "model_version   test-model-7" in out
    assert "created         2023-11-14T22:13:20+00:00" in out
    assert "search    yes     ndcg@10=0.5000" in out
    assert main(["info", "--target", server.target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["catalog_size"] == 1234


def test_health_exit_status_follows_serving(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["health", "--target", server.target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", "--target", server.target, "--service", "unirank.v1.RecommenderService"]) == 1
    assert capsys.readouterr().out.strip() == "NOT_SERVING"
    assert main(["health", "--target", server.target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"service": "", "status": "SERVING"}


def test_target_comes_from_the_environment(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UNIRANK_TARGET", server.target)
    assert main(["health"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_unreachable_server_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert main(["info", "--target", "127.0.0.1:1"]) == 1
    assert capsys.readouterr().err.startswith("unirank: UNAVAILABLE: ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["recommend", "search"],  # --query is required
        ["recommend", "notification"],  # --user is required
        ["recommend", "new-releases"],  # --user is required
        ["recommend", "new-releases", "--user", "u", "--window-years", "-1"],
        ["recommend", "--max-results", "-1", "search", "--query", "q"],
        ["recommend", "--timeout", "0", "search", "--query", "q"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "recommend" in out and "info" in out and "health" in out


def test_a_violation_the_message_already_says_is_printed_once() -> None:
    # The server's message names the violations, and its ErrorInfo reason repeats the code.
    error = UniRankError(
        "INVALID_ARGUMENT",
        "invalid request: context.search.query: is required (non-blank)",
        field_violations=[
            ("context.search.query", "is required (non-blank)"),
            ("options.max_results", "<= 100"),
        ],
        reason="INVALID_ARGUMENT",
    )
    stream = io.StringIO()
    print_error(error, stream)
    assert stream.getvalue().splitlines() == [
        "unirank: INVALID_ARGUMENT: invalid request: context.search.query: is required (non-blank)",
        "  options.max_results: <= 100",
    ]


def test_a_closed_pipe_ends_quietly(server: RunningServer) -> None:
    # `unirank recommend --json ... | head -2`: the reader leaves before the output ends.
    script = (
        "import sys; from unirank.client.cli import main; "
        f"raise SystemExit(main(['recommend', '--target', '{server.target}', '--json', "
        "'search', '--query', 'q']))"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    # Closed before the child has even imported the client, so its first write finds no reader.
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=30) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err, err

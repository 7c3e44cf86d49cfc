"""The summary of a py-spy profile: where the samples are, without the shared trunk."""

from __future__ import annotations

from harness.profiling import top_frames

COLLAPSED = """main;loop;handle_http;parse 30
main;loop;handle_http;validate 20
main;loop;relay;publish 40
main;loop 10
not a sample line
"""


def test_top_frames_rank_own_and_total_time_without_the_trunk() -> None:
    frames = top_frames(COLLAPSED, top=3)

    assert frames["own"] == [("publish", 40.0), ("parse", 30.0), ("validate", 20.0)]
    assert frames["total"] == [("handle_http", 50.0), ("publish", 40.0), ("relay", 40.0)]


def test_an_empty_profile_has_no_frames() -> None:
    assert top_frames("", top=5) == {"own": [], "total": []}

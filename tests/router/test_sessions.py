"""Which conversation a request belongs to, in every client API."""

from __future__ import annotations

from router.routing.sessions import fingerprint, prefix_tokens, session_of, user_turns

TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]


def chat(turns: int, system: str = "You are an agent. " * 500) -> dict[str, object]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}]
    for i in range(turns):
        msgs += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return {"model": "m", "messages": msgs[:-1], "tools": TOOLS}


def test_explicit_ids_come_first_in_the_documented_order() -> None:
    body = {**chat(1), "prompt_cache_key": "pk"}
    assert session_of("r", "chat", body, {"x-session-id": "s1", "session_id": "c"}) == "h:s1"
    assert session_of("r", "chat", body, {"session_id": "c"}) == "k:pk"
    assert session_of("r", "chat", chat(1), {"x-claude-code-session-id": "cc"}) == "a:cc"
    assert session_of("r", "chat", chat(1), {"session-id": "codex"}) == "a:codex"
    long_id = session_of("r", "chat", chat(1), {"x-session-id": "z" * 10_000})
    assert long_id.startswith("h:") and len(long_id) < 64


def test_a_conversation_keeps_its_fingerprint_as_it_grows() -> None:
    assert fingerprint("r", "chat", chat(1)) == fingerprint("r", "chat", chat(7))
    assert fingerprint("r", "chat", chat(1)) != fingerprint("other", "chat", chat(1))
    other_first = chat(1)
    other_first["messages"][1]["content"] = "a different task"  # type: ignore[index]
    assert fingerprint("r", "chat", chat(1)) != fingerprint("r", "chat", other_first)
    assert fingerprint("r", "chat", chat(1)) != fingerprint("r", "chat", chat(1, system="Other."))


def test_messages_and_responses_bodies() -> None:
    m1 = {
        "system": "sys",
        "tools": [{"name": "bash"}],
        "messages": [{"role": "user", "content": "go"}],
    }
    m2 = {
        **m1,
        "messages": [
            *m1["messages"],
            {"role": "assistant", "content": "ok"},  # type: ignore[list-item]
            {"role": "user", "content": "more"},
        ],
    }
    assert fingerprint("r", "messages", m1) == fingerprint("r", "messages", m2)
    assert user_turns("messages", m2) == 2
    r1 = {"instructions": "i", "input": "hello"}
    r2 = {
        "instructions": "i",
        "input": [
            {"role": "user", "content": "hello"},
            {"type": "function_call_output", "output": "x"},
        ],
    }
    assert fingerprint("r", "responses", r1) == fingerprint("r", "responses", r2)
    assert prefix_tokens(4000) == 1000


def test_odd_bodies_do_not_raise() -> None:
    for body in (
        {},
        {"messages": "x"},
        {"messages": [1, None, {"role": 3}]},
        {"input": 5},
        {"system": [{"type": "text", "text": "s" * 100_000}], "messages": []},
    ):
        for api in ("chat", "messages", "responses", "completions"):
            assert session_of("r", api, body, {}).startswith("f:")
            assert user_turns(api, body) >= 0

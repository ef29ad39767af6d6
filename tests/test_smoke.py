"""The README's promise: the shipped routes.yaml answers offline through the OpenAI SDK."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.support import ROOT, RouterProcess


def test_shipped_config_streams_with_the_openai_sdk(tmp_path: Path) -> None:
    with RouterProcess(ROOT / "routes.yaml", tmp_path, env={"ROUTER_DATABASE_URL": ""}) as router:
        client = openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert len(text.split()) >= 4
        answer = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        models = {m.id for m in client.models.list()}
        assert {"demo", "claude-sonnet-4-6"} <= models
        client.close()
